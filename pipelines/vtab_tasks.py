"""Small VTAB-1k-style tasks generated from real images, in the VTAB-1k folder layout.

VTAB-1k (Zhai et al., 2019) trains on 1,000 images per task (800 train / 200 val) and
tests on a separate set; its "structured" tasks need spatial reasoning that a classifier
pretrained on natural images lacks. No VTAB data can be had here, so these tasks rebuild
that shape from the real files in ``../shared/data`` (32x32 RGB PNGs, deterministic):

* ``digits``: MNIST test digits padded 28 -> 32 px, as RGB (a domain shift, 10 classes);
* ``rotation``: a CIFAR-10 test image rotated counter-clockwise by label x 90 deg (4);
* ``location``: a 12 px CIFAR-10 object on a noisy grey canvas, label = cell of a 3x3 grid (9);
* ``count``: 1-4 10 px CIFAR-10 objects in distinct cells of a 3x3 grid, label = count - 1 (4).

Source images are drawn without replacement from one seeded order per task, train/val first,
then test, so no source image is shared between the training images and the test set.
Labels are balanced in every split and in train800val200 (counts differ by at most one).
Each task folder also holds ``classnames.txt`` and ``sources.tsv`` (every image's source and
paste parameters); the output folder holds ``tasks.json`` (seed, sizes, source files and
their md5s).

    python -m pipelines.vtab_tasks --out /tmp/vtab_small            # 800/200 + 2,000 test
    python -m pipelines.vtab_tasks --out /tmp/vtab_tiny --small     # smoke-test sizes
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
CIFAR_TAR = "cifar10/test.tar"
MNIST_IMAGES = "mnist/t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
GENERATOR_VERSION = 1
SIZE = 32  # every output image is SIZE x SIZE RGB
#: VTAB-1k list files (split name -> image sub-folder); train800val200 is their union.
SPLITS = {"train800": "train", "val200": "val", "test": "test"}
PROVENANCE = "sources.tsv"
MANIFEST = "tasks.json"


@dataclass(frozen=True)
class Sizes:
    """Images per split; VTAB-1k's are 800 / 200 (the test size is ours)."""

    train: int = 800
    val: int = 200
    test: int = 2000

    def __post_init__(self) -> None:
        for name, n in asdict(self).items():
            if n < 1:
                raise ValueError(f"{name} size must be >= 1, got {n}")

    def of(self, split: str) -> int:
        return {"train800": self.train, "val200": self.val, "test": self.test}[split]


SMALL = Sizes(train=80, val=20, test=100)


@dataclass
class Example:
    """One generated image, its label and where it came from."""

    image: np.ndarray  # (32, 32, 3) uint8
    label: int
    source: str
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- sources


class Pool:
    """Source images drawn without replacement in a seeded order, one queue per key."""

    def __init__(
        self, queues: dict[int, list[int]], load: Callable[[int], tuple[str, np.ndarray]], what: str
    ) -> None:
        self.queues = {k: list(v) for k, v in queues.items()}
        self.load = load
        self.what = what

    def take(self, key: int = 0) -> tuple[str, np.ndarray]:
        queue = self.queues[key]
        if not queue:
            raise ValueError(
                f"ran out of {self.what} source images (key {key}); "
                "ask for fewer images (--train-size/--val-size/--test-size)"
            )
        return self.load(queue.pop(0))


class CifarTest:
    """CIFAR-10 test JPEGs read straight from ``test.tar``, decoded on first use."""

    def __init__(self, archive: Path) -> None:
        self.tar = tarfile.open(archive)  # noqa: SIM115 - kept open for lazy decoding; see close()
        members = [m for m in self.tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        self.members = {m.name: m for m in members}
        self.names = sorted(self.members)  # the canonical order every seed permutes
        self._cache: dict[str, np.ndarray] = {}

    def load(self, name: str) -> np.ndarray:
        if name not in self._cache:
            fh = self.tar.extractfile(self.members[name])
            assert fh is not None
            with Image.open(io.BytesIO(fh.read())) as im:
                self._cache[name] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        return self._cache[name]

    def pool(self, rng: np.random.Generator) -> Pool:
        order = rng.permutation(len(self.names)).tolist()
        return Pool({0: order}, lambda i: (self.names[i], self.load(self.names[i])), "CIFAR-10")

    def close(self) -> None:
        self.tar.close()


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: big-endian header, then uint8 data), gunzipped."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def mnist_pool(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Pool:
    """One queue per digit, each in a seeded order."""
    queues = {d: rng.permutation(np.flatnonzero(labels == d)).tolist() for d in range(10)}
    return Pool(queues, lambda i: (f"{Path(MNIST_IMAGES).name}#{i}", images[i]), "MNIST")


# --------------------------------------------------------------------------- recipes


def digit(label: int, pool: Pool, rng: np.random.Generator) -> Example:
    name, grey = pool.take(label)  # (28, 28)
    padded = np.pad(grey, 2)  # (32, 32): the classic LeNet padding, no resampling
    return Example(np.repeat(padded[:, :, None], 3, axis=2), label, name)


def rotation(label: int, pool: Pool, rng: np.random.Generator) -> Example:
    name, image = pool.take()
    return Example(np.ascontiguousarray(np.rot90(image, k=label)), label, name, {"k": label})


def location(label: int, pool: Pool, rng: np.random.Generator) -> Example:
    """12 px object in cell (row, col) = divmod(label, 3), cell pitch 10 px, jitter +-2 px."""
    name, image = pool.take()
    row, col = divmod(label, 3)
    y, x = (int(np.clip(10 * c + rng.integers(-2, 3), 0, SIZE - 12)) for c in (row, col))
    canvas = background(rng)
    canvas[y : y + 12, x : x + 12] = shrink(image, 12)
    return Example(canvas, label, name, {"x": x, "y": y, "size": 12})


def count(label: int, pool: Pool, rng: np.random.Generator) -> Example:
    """label + 1 objects of 10 px in distinct cells of a 3x3 grid (offsets 1, 11, 21)."""
    cells = sorted(rng.choice(9, size=label + 1, replace=False).tolist())
    canvas, names = background(rng), []
    for cell in cells:
        name, image = pool.take()
        y, x = (1 + 10 * c for c in divmod(cell, 3))
        canvas[y : y + 10, x : x + 10] = shrink(image, 10)
        names.append(name)
    return Example(canvas, label, ",".join(names), {"cells": cells, "size": 10})


def background(rng: np.random.Generator) -> np.ndarray:
    """A neutral canvas: mid-grey with mild per-pixel colour noise."""
    noise = rng.normal(128.0, 24.0, size=(SIZE, SIZE, 3))
    return np.clip(np.rint(noise), 0, 255).astype(np.uint8)


def shrink(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


@dataclass(frozen=True)
class TaskSpec:
    """A task: its classes, what it tests, which source it draws from and its recipe."""

    name: str
    classnames: tuple[str, ...]
    description: str
    source: str  # "mnist" | "cifar10"
    make: Callable[[int, Pool, np.random.Generator], Example]


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("digits", tuple(str(d) for d in range(10)),
                 "MNIST test digit, padded to 32 px RGB (domain shift)", "mnist", digit),
        TaskSpec("rotation", ("0", "90", "180", "270"),
                 "CIFAR-10 test image rotated counter-clockwise by label*90 deg", "cifar10",
                 rotation),
        TaskSpec("location",
                 tuple(f"{r}-{c}" for r in ("top", "middle", "bottom")
                       for c in ("left", "centre", "right")),
                 "12 px CIFAR-10 object on noise; label = 3x3 grid cell (row*3+col)", "cifar10",
                 location),
        TaskSpec("count", ("1", "2", "3", "4"),
                 "1-4 10 px CIFAR-10 objects on noise; label = count-1", "cifar10", count),
    ]
}  # fmt: skip


# --------------------------------------------------------------------------- generation


def task_rng(seed: int, task: str) -> np.random.Generator:
    """A generator per (seed, task): tasks do not depend on which others are built."""
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def split_labels(sizes: Sizes, k: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """Labels per split, each split and train800val200 balanced (counts differ by <= 1).

    train800 and val200 are two contiguous windows of one cyclic class sequence, so both
    and their union are balanced; every split is then shuffled.
    """
    n = sizes.train + sizes.val
    cycle = rng.permutation(k)[np.arange(n) % k]
    test = rng.permutation(k)[np.arange(sizes.test) % k]
    parts = {"train800": cycle[: sizes.train], "val200": cycle[sizes.train :], "test": test}
    return {split: rng.permutation(labels).tolist() for split, labels in parts.items()}


def generate(
    spec: TaskSpec, pool: Pool, sizes: Sizes, rng: np.random.Generator
) -> dict[str, list[Example]]:
    """All splits of one task; train800 and val200 draw their sources before test."""
    labels = split_labels(sizes, len(spec.classnames), rng)
    return {split: [spec.make(y, pool, rng) for y in labels[split]] for split in SPLITS}


def write_task(folder: Path, spec: TaskSpec, splits: dict[str, list[Example]]) -> None:
    """PNGs + the four list files + classnames.txt + sources.tsv."""
    lines: dict[str, list[str]] = {}
    prov = ["# path\tlabel\tsource\tparams (json)"]
    for split, examples in splits.items():
        sub = folder / "images" / SPLITS[split]
        sub.mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i, ex in enumerate(examples):
            rel = f"images/{SPLITS[split]}/{i:05d}.png"
            Image.fromarray(ex.image).save(folder / rel, format="PNG")
            lines[split].append(f"{rel} {ex.label}")
            prov.append(f"{rel}\t{ex.label}\t{ex.source}\t{json.dumps(ex.params, sort_keys=True)}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        _write_lines(folder / f"{split}.txt", rows)
    _write_lines(folder / "classnames.txt", list(spec.classnames))
    _write_lines(folder / PROVENANCE, prov)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _replace(partial: Path, final: Path) -> None:
    """Move a finished task into place; only ever deletes a folder this script made."""
    if final.exists():
        if not (final / PROVENANCE).exists():
            raise FileExistsError(
                f"{final} exists and was not made by this script; choose another --out"
            )
        shutil.rmtree(final)
    partial.rename(final)


def task_summary(spec: TaskSpec, folder: Path, splits: dict[str, list[Example]]) -> dict:
    counts = {
        s: np.bincount([e.label for e in ex], minlength=len(spec.classnames)).tolist()
        for s, ex in splits.items()
    }
    lists = [f"{s}.txt" for s in (*SPLITS, "train800val200")]
    return {
        "classes": list(spec.classnames),
        "description": spec.description,
        "source": spec.source,
        "sizes": {s: len(ex) for s, ex in splits.items()},
        "label_counts": counts,
        "list_md5": {f: md5(folder / f) for f in lists},
    }


def build_one(
    spec: TaskSpec, pool: Pool, sizes: Sizes, rng: np.random.Generator, out: Path
) -> dict[str, Any]:
    """Generate one task into a hidden folder, then move it into place; its summary."""
    splits = generate(spec, pool, sizes, rng)
    partial = out / f".{spec.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_task(partial, spec, splits)
    _replace(partial, out / spec.name)
    return task_summary(spec, out / spec.name, splits)


def build_tasks(
    out_dir: str | Path,
    shared_data: str | Path = DEFAULT_DATA,
    seed: int = 0,
    test_size: int = 2000,
    train_size: int = 800,
    val_size: int = 200,
    tasks: Sequence[str] = tuple(TASKS),
) -> dict[str, Any]:
    """Generate ``tasks`` into ``out_dir/<task>`` and write ``out_dir/tasks.json``."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    out, data = Path(out_dir), Path(shared_data)
    sizes = Sizes(train_size, val_size, test_size)
    needed = sorted({TASKS[t].source for t in tasks})
    files = {"cifar10": [CIFAR_TAR], "mnist": [MNIST_IMAGES, MNIST_LABELS]}
    src_files = [f for s in needed for f in files[s]]
    for f in src_files:
        if not (data / f).is_file():
            raise FileNotFoundError(
                f"missing source file {data / f}; point --data at the "
                "shared data folder (holding cifar10/ and mnist/)"
            )
    cifar = CifarTest(data / CIFAR_TAR) if "cifar10" in needed else None
    mnist = None
    if "mnist" in needed:
        mnist = read_idx(data / MNIST_IMAGES), read_idx(data / MNIST_LABELS)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    try:
        for name in tasks:
            spec, rng = TASKS[name], task_rng(seed, name)
            pool = cifar.pool(rng) if spec.source == "cifar10" else mnist_pool(*mnist, rng)
            summaries[name] = build_one(spec, pool, sizes, rng, out)
    finally:
        if cifar is not None:
            cifar.close()
    manifest = {
        "generator": "pipelines/vtab_tasks.py",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "sizes": asdict(sizes),
        "image_size": SIZE,
        "sources": {f: md5(data / f) for f in src_files},
        "tasks": summaries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_provenance(task_dir: str | Path) -> list[tuple[str, int, str, dict[str, Any]]]:
    """``sources.tsv`` rows: (image path, label, source(s), paste parameters)."""
    rows = []
    for line in (Path(task_dir) / PROVENANCE).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            path, label, source, params = line.split("\t")
            rows.append((path, int(label), source, json.loads(params)))
    return rows


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (one sub-folder per task)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with cifar10/ and mnist/")
    p.add_argument("--seed", type=int, default=0, help="generation seed")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    p.add_argument("--train-size", type=int, default=None, help="train800 images (800)")
    p.add_argument("--val-size", type=int, default=None, help="val200 images (200)")
    p.add_argument("--test-size", type=int, default=None, help="test images (2000)")
    p.add_argument(
        "--small",
        action="store_true",
        help=f"smoke-test sizes ({SMALL.train}/{SMALL.val}/{SMALL.test})",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = SMALL if args.small else Sizes()
    sizes = {k: getattr(args, f"{k}_size") or v for k, v in asdict(base).items()}
    t0 = time.perf_counter()
    manifest = build_tasks(
        args.out,
        args.data,
        args.seed,
        sizes["test"],
        sizes["train"],
        sizes["val"],
        [t for t in args.tasks.split(",") if t],
    )
    for name, task in manifest["tasks"].items():
        print(
            f"{name:9s} classes={len(task['classes']):2d} "
            + " ".join(f"{s}={n}" for s, n in task["sizes"].items())
        )
    print(f"wrote {args.out}/{MANIFEST} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
