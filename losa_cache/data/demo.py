"""``demo``: the package's own data set, drawn procedurally (no files, no downloads).

Task ``shape_quadrant``: every 32x32 image holds one *target* shape (circle or square) in
one of the four quadrants, plus one or two *distractors* (triangle or plus) in other
quadrants, all in random colours on a shaded, noisy background. Class = target shape x
target quadrant (8 classes, balanced in every split).

Why this task: the class needs both *what* (circle vs square among distractors of similar
size and colour) and *where* (quadrant). A frozen CIFAR-10 ViT's final CLS token summarises
the image and keeps little of the second, while its block outputs keep one token per 4x4
patch; a side network that mixes tokens can use that, so the demo shows LoSA adding value
over a linear probe. Colours, sizes and clutter are independent of the class, so no single
pixel statistic gives the label away.

Rows are fixed by the seed; image ``i`` is drawn on demand from a generator seeded by
``(seed, i)``, so the whole set costs nothing to build and each image is reproducible alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from losa_cache.data.base import ImageDataset, Sample

#: Rows per split (multiples of the class count, so classes are exactly balanced).
SIZES: dict[str, int] = {"train": 1600, "val": 320, "test": 480}
IMAGE_SIZE = 32
DEFAULT_SEED = 0
TARGETS = ("circle", "square")
DISTRACTORS = ("triangle", "plus")
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")
CLASSES = [f"{shape}_{quadrant}" for shape in TARGETS for quadrant in QUADRANTS]

_HALF = IMAGE_SIZE // 2
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)


@dataclass(repr=False)
class DemoDataset(ImageDataset):
    """The procedural shape-and-quadrant data set; ``seed`` fixes labels and pixels."""

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
            task="shape_quadrant",
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
    """Draw one image of class ``label``: (H, W, 3) uint8."""
    target, quadrant = divmod(label, len(QUADRANTS))
    img = _background(rng)
    base = img.reshape(-1, 3).mean(axis=0)
    free = [q for q in range(len(QUADRANTS)) if q != quadrant]
    others = rng.permutation(free)[: rng.integers(1, 3)]
    objects = [(TARGETS[target], quadrant)]
    objects += [(DISTRACTORS[rng.integers(len(DISTRACTORS))], int(q)) for q in others]
    for kind, q in objects:
        img[_shape_mask(rng, kind, q)] = _colour(rng, base)
    img += rng.normal(0.0, 10.0, img.shape)  # sensor-like noise over shapes and background
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


def _shape_mask(rng: np.random.Generator, kind: str, quadrant: int) -> np.ndarray:
    """Boolean (H, W) mask of a shape of random size and offset inside ``quadrant``."""
    s = rng.uniform(4.0, 6.5)  # half-size in pixels
    slack = _HALF / 2 - s - 0.5
    cy = _HALF * (quadrant // 2) + (_HALF - 1) / 2 + rng.uniform(-slack, slack)
    cx = _HALF * (quadrant % 2) + (_HALF - 1) / 2 + rng.uniform(-slack, slack)
    dy, dx = _YY - cy, _XX - cx
    if kind == "circle":
        return dx**2 + dy**2 <= s**2
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.88 * s
    if kind == "triangle":
        dy = dy if rng.random() < 0.5 else -dy  # pointing up or down
        return (np.abs(dy) <= s) & (np.abs(dx) <= 0.55 * (dy + s))
    arm = s / 2.5  # plus
    return ((np.abs(dx) <= s) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= s) & (np.abs(dx) <= arm))
