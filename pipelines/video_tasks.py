"""A generated video task where time is the label: an object moving in one of 4 directions.

Each clip is an object (a 16 px CIFAR-10 test image from ``../shared/data``, or an image of
the embedded ``demo`` set for the offline demo) on a static noisy grey 32 px canvas, moving
``step`` px per frame right, left, down or up; label = direction. Positions along the motion
axis are ``a + k * step`` (right/down) or ``a + (F - 1 - k) * step`` (left/up) with the same
random ``a``, so a clip moving left is *exactly* a clip moving right played backwards: the
frames as a set say which axis, only their order says which way. A model that ignores frame
order (frame-mean features; LoSA without g_temporal on a ViViT whose temporal position
embeddings are zero) can do no better than 50 %; Eq. 6's g_temporal can read the order.

Clips are written with PyAV (mpeg4, near-lossless) in the ``videofolder:`` layout,
``ROOT/{train,val,test}/{right,left,down,up}/<n>.mp4``, with ``sources.tsv`` (every clip's
source image and parameters) and ``task.json`` (seed, sizes, generator version).

    python -m losa_cache.pipelines.video_tasks --out /tmp/motion            # 200/50/200 clips
    python -m losa_cache.pipelines.video_tasks --out /tmp/motion --small    # smoke-test sizes
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from losa_cache.pipelines.vtab_tasks import (
    CIFAR_TAR,
    DEFAULT_DATA,
    SIZE,
    CifarTest,
    background,
    shrink,
)

DIRECTIONS = ("right", "left", "down", "up")
GENERATOR_VERSION = 1
OBJECT = 16  # px: the moving object's side
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class MotionSizes:
    """Clips per split (balanced over the 4 directions), frames per clip, px per frame."""

    train: int = 200
    val: int = 50
    test: int = 200
    frames: int = 8
    step: int = 2

    def __post_init__(self) -> None:
        for name, n in asdict(self).items():
            if n < 1:
                raise ValueError(f"{name} must be >= 1, got {n}")
        if (self.frames - 1) * self.step > SIZE - OBJECT:
            raise ValueError(
                f"{self.frames} frames x {self.step} px leave the {SIZE} px canvas; "
                f"use (frames - 1) * step <= {SIZE - OBJECT}"
            )


SMALL = MotionSizes(train=16, val=8, test=8)


def moving_clip(
    obj: np.ndarray, direction: int, sizes: MotionSizes, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, int]]:
    """(F, 32, 32, 3) uint8 frames of ``obj`` moving in ``DIRECTIONS[direction]``."""
    travel = (sizes.frames - 1) * sizes.step
    a = int(rng.integers(0, SIZE - OBJECT - travel + 1))  # start on the motion axis
    b = int(rng.integers(0, SIZE - OBJECT + 1))  # fixed on the other axis
    canvas = background(rng)
    frames = np.empty((sizes.frames, SIZE, SIZE, 3), np.uint8)
    for k in range(sizes.frames):
        step = k if direction in (0, 2) else sizes.frames - 1 - k  # left/up: right/down reversed
        p = a + step * sizes.step
        y, x = (b, p) if direction < 2 else (p, b)
        frames[k] = canvas
        frames[k, y : y + OBJECT, x : x + OBJECT] = obj
    return frames, {"a": a, "b": b}


def write_clip(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """Frames (F, H, W, 3) uint8 as an mpeg4 file, near-lossless (qscale 1)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps, options={"qscale": "1"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def cifar_objects(data: Path, rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    """CIFAR-10 test images in a seeded order, without replacement, shrunk to the object size."""
    cifar = CifarTest(data / CIFAR_TAR)
    try:
        for i in rng.permutation(len(cifar.names)).tolist():
            name = cifar.names[i]
            yield name, shrink(cifar.load(name), OBJECT)
    finally:
        cifar.close()


def demo_objects(rng: np.random.Generator) -> Iterator[tuple[str, np.ndarray]]:
    """Images of the embedded ``demo`` set (no files needed), shrunk to the object size."""
    from losa_cache.data import get_dataset

    ds = get_dataset("demo")
    for r in rng.permutation(len(ds)).tolist():
        yield ds.samples[r].source, shrink(np.asarray(ds.load(r)), OBJECT)


def build_motion_task(
    out: Path,
    sizes: MotionSizes = MotionSizes(),
    seed: int = 0,
    objects: Callable[[np.random.Generator], Iterator[tuple[str, np.ndarray]]] | None = None,
    data: Path = DEFAULT_DATA,
) -> Path:
    """Write the task under ``out`` (a videofolder root) and return it; never overwrites."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: pick a new --out folder")
    rng = np.random.default_rng(seed)
    source = objects(rng) if objects is not None else cifar_objects(data, rng)
    lines = ["split\tfile\tdirection\tsource\ta\tb"]
    for split in SPLITS:
        n = getattr(sizes, split)
        for i in range(n):
            direction = i % len(DIRECTIONS)  # balanced: counts differ by at most one
            name, obj = next(source)
            frames, params = moving_clip(obj, direction, sizes, rng)
            rel = f"{split}/{DIRECTIONS[direction]}/{i:05d}.mp4"
            write_clip(out / rel, frames)
            lines.append(
                f"{split}\t{rel}\t{DIRECTIONS[direction]}\t{name}\t{params['a']}\t{params['b']}"
            )
    (out / "sources.tsv").write_text("\n".join(lines) + "\n")
    meta = {
        "task": "motion",
        "classes": list(DIRECTIONS),
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "object_px": OBJECT,
        **asdict(sizes),
    }
    (out / "task.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="new folder for the clips")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="smoke-test sizes (16/8/8 clips)")
    args = p.parse_args(argv)
    root = build_motion_task(
        args.out, SMALL if args.small else MotionSizes(), args.seed, data=args.data
    )
    print(f"wrote {root} (videofolder:{root})")


if __name__ == "__main__":
    main()
