"""Helpers of benchmarks/gpu.sh: the wheels a lent GPU machine lacks, and the shared store.

    python benchmarks/_gpu.py carry [--image benchmarks/gpu_image.txt]   # NAME==VERSION lines
    python benchmarks/_gpu.py stale .wheels                               # wheels not pinned
    python benchmarks/_gpu.py store --model vit_b --random-init --store S.zarr --limit 512

``carry`` walks losa-cache's runtime requirements (extras and markers evaluated for the GPU
machine: CPython 3.12 on Linux x86-64) through the distributions installed here, pins each
to the version installed here (the versions the tests ran with), and leaves out what the
machine's image already holds (``gpu_image.txt``: torch, timm, numpy, ... too big to carry
and already there). What is left is small enough to travel with the working tree.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

HERE = Path(__file__).resolve().parent
#: Marker environment of the GPU machine (device README: Python 3.12.3, x86-64 Linux).
TARGET = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_machine": "x86_64",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "python_version": "3.12",
    "python_full_version": "3.12.3",
}


def image_packages(path: Path) -> set[str]:
    """Canonical names in the image list (one a line, '#' comments)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(name) for name in lines if name}


def closure(root: str = "losa-cache", stop: frozenset[str] = frozenset()) -> dict[str, str]:
    """name -> installed version of every runtime requirement of ``root``, transitively.

    Packages named in ``stop`` are listed but not walked into: the image brings their own.
    """
    found: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker and not any(
                req.marker.evaluate({**TARGET, "extra": e}) for e in (extras or {""})
            ):
                continue
            key = canonicalize_name(req.name)
            new = set(req.extras) - extras_seen.setdefault(key, set())
            if key in found and not new:
                continue
            try:
                found[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                raise SystemExit(
                    f"{req.name} (needed by {name}) is not installed here: install it into this "
                    "environment first, so its version can be pinned"
                ) from None
            extras_seen[key] |= new
            if key not in stop:
                todo.append((req.name, frozenset(extras_seen[key])))
    return found


def carry(image: Path) -> list[str]:
    """Pinned requirements the GPU machine lacks, sorted."""
    have = image_packages(image)
    return sorted(f"{n}=={v}" for n, v in closure(stop=frozenset(have)).items() if n not in have)


def stale_wheels(folder: Path) -> list[str]:
    """Wheels in ``folder`` that its carry.txt does not pin (an earlier prepare's)."""
    lines = (folder / "carry.txt").read_text().split()
    pins = {(canonicalize_name(n), v) for n, _, v in (line.partition("==") for line in lines)}
    out = []
    for wheel in sorted(folder.glob("*.whl")):
        name, version, *_ = parse_wheel_filename(wheel.name)
        if (canonicalize_name(name), str(version)) not in pins:
            out.append(wheel.name)
    return out


def build_store(args: argparse.Namespace) -> None:
    """One store per model for train.py and sweep.py (extract.py keeps its own, temporary)."""
    from _common import extract_store  # torch only here: carry and stale run without it

    extract_store(
        model=args.model,
        random_init=args.random_init,
        dataset=args.dataset,
        store=args.store,
        layers=args.layers,
        limit=args.limit,
        batch_size=args.batch_size,
        workers=args.workers,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("carry", help="print the pinned requirements the GPU image lacks")
    c.add_argument("--image", type=Path, default=HERE / "gpu_image.txt")
    w = sub.add_parser("stale", help="print the wheels of a folder its carry.txt does not pin")
    w.add_argument("folder", type=Path)
    s = sub.add_parser("store", help="extract the store train.py and sweep.py share")
    s.add_argument("--model", required=True)
    s.add_argument("--random-init", action="store_true")
    s.add_argument("--dataset", default="demo")
    s.add_argument("--store", required=True)
    s.add_argument("--layers", default="evenly:3")
    s.add_argument("--limit", type=int, default=None, help="at most N images per split")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--workers", type=int, default=-1)
    args = ap.parse_args(argv)
    if args.cmd == "carry":
        sys.stdout.write("".join(f"{line}\n" for line in carry(args.image)))
    elif args.cmd == "stale":
        sys.stdout.write("".join(f"{name}\n" for name in stale_wheels(args.folder)))
    else:
        build_store(args)


if __name__ == "__main__":
    main()
