"""``demo``: the package's own data set, drawn procedurally (no files, no downloads).

Task ``position``: every 32x32 image holds one shape (circle, square, triangle or plus,
random colour and size) in one cell of a 3x3 grid, on a shaded, noisy background.
Class = the grid cell (9 classes, balanced in every split).

Why this task: "where is the object" is exactly what a frozen backbone's final CLS token
summarises away and its patch tokens keep. Measured with the embedded CIFAR-10 ViT
(1,800 train / 450 val images): a linear probe on the last block's CLS token reaches
~25% (chance 11%), one on all its tokens flattened ~82%. A side network that mixes
tokens can close that gap, so the demo shows LoSA adding value over the linear probe.
(A shape-identity task was tried first: these features barely encode shape, ~36% even
from all tokens, so it showed nothing.)

Rows are fixed by the seed; image ``i`` is drawn on demand from a generator seeded by
``(seed, i)``, so the whole set costs nothing to build and each image is reproducible alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from losa_cache.data.base import ImageDataset, Sample

#: Rows per split (multiples of the class count, so classes are exactly balanced).
SIZES: dict[str, int] = {"train": 1800, "val": 450, "test": 900}
IMAGE_SIZE = 32
DEFAULT_SEED = 0
SHAPES = ("circle", "square", "triangle", "plus")
GRID = 3
CLASSES = [
    f"{row}_{col}" for row in ("top", "middle", "bottom") for col in ("left", "centre", "right")
]

_CELL = IMAGE_SIZE / GRID
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


@dataclass(repr=False)
class DemoDataset(ImageDataset):
    """The procedural object-position data set; ``seed`` fixes labels and pixels."""

    seed: int = DEFAULT_SEED

    @classmethod
    def create(cls, seed: int = DEFAULT_SEED) -> DemoDataset:
        samples: list[Sample] = []
        for split_id, (split, n) in enumerate(SIZES.items()):
            labels = _balanced_labels(n, seed, split_id)
            samples += [
                Sample(f"demo://{split}/{i:06d}", int(y), split) for i, y in enumerate(labels)
            ]
        return cls(
            spec="demo" if seed == DEFAULT_SEED else f"demo:{seed}",
            samples=samples,
            classes=list(CLASSES),
            task="position",
            meta={"image_size": (IMAGE_SIZE, IMAGE_SIZE), "seed": seed, "generated": True},
            seed=seed,
        )

    def load(self, index: int) -> Image.Image:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"row {index} out of range for {len(self.samples)} rows")
        rng = np.random.default_rng([self.seed, index])
        return Image.fromarray(render(rng, self.samples[index].label), "RGB")


def _balanced_labels(n: int, seed: int, split_id: int) -> np.ndarray:
    """Exactly n / C rows per class, in a seeded shuffled order."""
    rng = np.random.default_rng([seed, 1_000_003, split_id])
    return rng.permutation(np.arange(n) % len(CLASSES))


def render(rng: np.random.Generator, label: int) -> np.ndarray:
    """Draw one image of class ``label`` (the grid cell): (H, W, 3) uint8."""
    img = _background(rng)
    base = img.reshape(-1, 3).mean(axis=0)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    img[_shape_mask(rng, kind, label)] = _colour(rng, base)
    img += rng.normal(0.0, 10.0, img.shape)  # sensor-like noise over shape and background
    return np.clip(img, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth random shading: a 4x4 grid of colours, bilinearly upsampled. (H, W, 3) float."""
    grid = rng.uniform(30.0, 225.0, 3) + rng.normal(0.0, 30.0, (4, 4, 3))
    t = np.linspace(0.0, 3.0, IMAGE_SIZE)
    i0 = np.minimum(t.astype(int), 2)
    w = t - i0
    rows = grid[i0] * (1 - w[:, None, None]) + grid[i0 + 1] * w[:, None, None]  # (H, 4, 3)
    return rows[:, i0] * (1 - w[None, :, None]) + rows[:, i0 + 1] * w[None, :, None]  # (H, W, 3)


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour far enough from the background mean to be visible."""
    for _ in range(32):
        c = rng.uniform(0.0, 255.0, 3)
        if np.linalg.norm(c - background) > 110.0:
            return c
    return 255.0 - background  # fallback: the opposite colour is always far


def cell_centre(cell: int) -> tuple[float, float]:
    """(y, x) pixel centre of grid cell ``cell`` (row-major)."""
    return _CELL * (cell // GRID) + _CELL / 2 - 0.5, _CELL * (cell % GRID) + _CELL / 2 - 0.5


def _shape_mask(rng: np.random.Generator, kind: str, cell: int) -> np.ndarray:
    """Boolean (H, W) mask of a shape of random size, jittered around a cell's centre."""
    s = rng.uniform(3.0, 4.0)  # half-size in pixels: with the jitter, it stays in its cell
    cy, cx = cell_centre(cell)
    dy, dx = _YY - cy - rng.uniform(-1.0, 1.0), _XX - cx - rng.uniform(-1.0, 1.0)
    if kind == "circle":
        return dx**2 + dy**2 <= s**2
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.88 * s
    if kind == "triangle":
        dy = dy if rng.random() < 0.5 else -dy  # pointing up or down
        return (np.abs(dy) <= s) & (np.abs(dx) <= 0.55 * (dy + s))
    arm = s / 2.5  # plus
    return ((np.abs(dx) <= s) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= s) & (np.abs(dx) <= arm))
