"""Augmented views: the ``--augment`` spec, its seeded transform, and which view a row
shows in an epoch.

A feature cache stores one clean view per image, so every cached method would train on the
same features each epoch; live training with augmentation (MIST's few-shot runs use
random-resized-crop + flip) sees a new view each time. ``extract --views V --augment SPEC``
stores V augmented views of every training image besides the clean one, and training
draws one of the V + 1 per image and epoch.

Everything is a pure function of integers, never of a process's RNG state:

* view ``v`` (1..V) of clean store row ``r`` is :func:`augment` of the decoded image with
  a ``torch.Generator`` seeded from ``(view_seed, r, v)`` (:func:`view_generator`): the
  same tensor on any machine, with any number of decoding workers, fresh or resumed;
* the view row ``r`` shows in epoch ``e`` of a run seeded ``s`` is :func:`draw_views`
  ``(s, e, r)`` in 0..V (0: the clean view), so the batch order guarantees hold (a store
  with views == live training with the same augmentation; a sweep member == the run
  alone), and evaluation, whose order draws nothing, never sees an augmented view.

Spec: comma-separated ops applied in order to the decoded image, then to-tensor and the
backbone's normalisation: ``rrc[:LO-HI]`` (random resized crop to the input size, area
fraction in [LO, HI], default 0.08-1, aspect 3/4..4/3, timm/torchvision's algorithm) and
``flip`` (horizontal, p = 0.5). Without ``rrc`` the image is resized (squashed) to the
input size first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "AugmentSpec",
    "ViewDraw",
    "ViewPlan",
    "augment",
    "draw_views",
    "parse_augment",
    "view_generator",
]

RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class AugmentSpec:
    """A parsed ``--augment``: random resized crop (area range, or None) and flip."""

    rrc: tuple[float, float] | None = None
    flip: bool = False

    def __str__(self) -> str:
        ops = [f"rrc:{self.rrc[0]:g}-{self.rrc[1]:g}"] if self.rrc else []
        return ",".join(ops + (["flip"] if self.flip else []))


def parse_augment(spec: str) -> AugmentSpec:
    """``rrc:0.08-1,flip`` -> AugmentSpec; a one-line error names a bad op and the forms."""
    forms = "rrc[:LO-HI] (0 < LO <= HI <= 1) and flip, comma-separated, e.g. rrc:0.08-1,flip"
    rrc, flip = None, False
    for op in (p.strip() for p in str(spec).split(",")):
        name, _, arg = op.partition(":")
        if name == "flip" and not arg and not flip:
            flip = True
        elif name == "rrc" and rrc is None:
            rrc = _area(arg or "0.08-1", forms)
        else:
            raise ValueError(f"bad --augment op {op!r} in {spec!r}; the ops are {forms}")
    return AugmentSpec(rrc, flip)


def _area(arg: str, forms: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in arg.split("-"))
    except ValueError:
        raise ValueError(f"bad rrc area {arg!r}; the ops are {forms}") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"rrc area {arg!r} must satisfy 0 < LO <= HI <= 1; the ops are {forms}")
    return lo, hi


def view_generator(view_seed: int, row: int, view: int) -> torch.Generator:
    """The generator of view ``view`` of clean store row ``row``: seeded from the three
    integers alone (numpy's SeedSequence mixes them), never from global state."""
    state = np.random.SeedSequence([int(view_seed), int(row), int(view)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


def augment(
    image: Image.Image, spec: AugmentSpec, preprocess: dict[str, Any], gen: torch.Generator
) -> torch.Tensor:
    """One augmented view (3, H, W), normalised as the backbone's eval transform."""
    from timm.data.transforms import str_to_interp_mode
    from torchvision.transforms import functional as F

    size = [int(v) for v in preprocess["input_size"][-2:]]
    interp = str_to_interp_mode(preprocess["interpolation"])
    if spec.rrc is not None:
        i, j, h, w = _rrc_params(image.width, image.height, spec.rrc, gen)
        image = F.resized_crop(image, i, j, h, w, size, interpolation=interp)
    else:
        image = F.resize(image, size, interpolation=interp)
    if spec.flip and torch.rand(1, generator=gen).item() < 0.5:
        image = F.hflip(image)
    x = F.to_tensor(image)
    return F.normalize(x, list(preprocess["mean"]), list(preprocess["std"]))


def _rrc_params(
    width: int, height: int, scale: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawing from ``gen``."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=gen).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return i, j, h, w
    ratio = width / height  # fallback: the central crop within the aspect range
    if ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        w, h = round(height * RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ------------------------------------------------------------------------------ drawing

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draw_views(seed: int, epoch: int | np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """(n,) int64 in 0..count: the view each clean store row shows in ``epoch`` (0: the
    clean one; an array: each row's epoch) of a run seeded ``seed``; a pure function of
    the three integers."""
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64)
    epochs = np.asarray(epoch, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + epochs)
        x = _mix(rows * np.uint64(0xD1B54A32D192ED03) ^ key)
    return (x % np.uint64(count + 1)).astype(np.int64)


@dataclass(frozen=True)
class ViewDraw:
    """What a training order draws from: ``count`` augmented views besides the clean one
    (the order's seed and each row's epoch complete the draw)."""

    count: int

    def draw(self, seed: int, epoch: int | np.ndarray, rows: np.ndarray) -> np.ndarray:
        return draw_views(seed, epoch, rows, self.count)


# ------------------------------------------------------------------------------ store rows


def is_train_split(name: str) -> bool:
    """Splits whose rows get views: train, train800, train800val200, train_fit, ..."""
    return name.startswith("train")


@dataclass(frozen=True)
class ViewPlan:
    """Where an extraction's views go: after the ``n_clean`` clean rows, the ``count``
    views of each training row, row-major (view v of the j-th training row is store row
    ``n_clean + j * count + v - 1``), so a window's views lie close together."""

    count: int
    spec: AugmentSpec
    seed: int
    n_clean: int
    train: np.ndarray  # (m,) sorted clean store rows that have views

    @classmethod
    def of(
        cls, splits: dict[str, list[int]], count: int, spec: str | None, seed: int
    ) -> ViewPlan | None:
        """The plan for ``splits`` (store rows 0..n-1), None without views."""
        if not count:
            return None
        rows = sorted({r for v in splits.values() for r in v})
        train = sorted({r for k, v in splits.items() if is_train_split(k) for r in v})
        if not train:
            raise ValueError(
                f"--views: no training split among {list(splits)} (views are "
                "made for splits named train*)"
            )
        return cls(count, parse_augment(spec or ""), seed, len(rows), np.asarray(train))

    @property
    def total(self) -> int:
        return self.n_clean + self.count * len(self.train)

    def view_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(clean row, view) of store rows n_clean.. in order."""
        return (
            np.repeat(self.train, self.count),
            np.tile(np.arange(1, self.count + 1), len(self.train)),
        )

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(clean row, view) of every store row (a clean row is its own view 0)."""
        clean, view = self.view_rows()
        return (
            np.concatenate([np.arange(self.n_clean), clean]),
            np.concatenate([np.zeros(self.n_clean, np.int64), view]),
        )

    def table(self) -> np.ndarray:
        """(n_clean, count + 1) int64: the store row of each view of each clean row
        (column 0: the row itself; -1: a row without views, val/test)."""
        out = np.full((self.n_clean, self.count + 1), -1, dtype=np.int64)
        out[:, 0] = np.arange(self.n_clean)
        out[self.train, 1:] = self.n_clean + np.arange(len(self.train) * self.count).reshape(
            len(self.train), self.count
        )
        return out

    def sources(self, clean: list[str]) -> list[str]:
        """Every store row's source: a view's is its image's with ``#view=v``."""
        rows, views = self.view_rows()
        return [*clean, *(f"{clean[r]}#view={v}" for r, v in zip(rows, views, strict=True))]

    def identity(self) -> dict[str, Any]:
        """What a resumed extraction must match."""
        return {
            "count": self.count,
            "augment": str(self.spec),
            "seed": self.seed,
            "train_rows": len(self.train),
        }


def check_views(views: int, spec: str | None, seed: int, video: bool) -> None:
    """Refuse a ``--views``/``--augment`` pair that cannot work, before anything loads."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ValueError(f"--views must be an integer >= 0, got {views!r}")
    if seed < 0:
        raise ValueError(f"--view-seed must be >= 0, got {seed}")
    if views and not spec:
        raise ValueError("--views needs --augment (e.g. --augment rrc:0.08-1,flip)")
    if spec and not views:
        raise ValueError("--augment makes the --views: give --views V (V >= 1)")
    if views and video:
        raise ValueError("--views is for images; video clips are stored clean only")
    if spec:
        parse_augment(spec)


def check_train_views(views: str, spec: str | None, live: bool) -> None:
    """``train --views``: all | clean from a store; live: N (>= 1) with --augment, or clean."""
    if live and spec:
        if not str(views).isdigit() or int(views) < 1:
            raise ValueError(
                f"--augment (live) needs --views N, the views drawn from (N >= 1);"
                f" got --views {views}"
            )
        parse_augment(spec)
    elif spec:
        raise ValueError(
            "--augment is for --live: a store's views were fixed by extract "
            "--views --augment (train with --views all | clean)"
        )
    elif views not in ("all", "clean"):
        raise ValueError(
            f"--views {views}: choose all or clean (a number only with --live --augment)"
        )


def train_views(views: str, held: int) -> ViewDraw | None:
    """What a training order draws from: ``held`` views (the store's, or live --views N)
    unless ``--views clean``."""
    if views == "clean" or not held:
        return None
    return ViewDraw(held)
