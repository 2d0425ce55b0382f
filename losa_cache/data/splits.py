"""Held-out splits carved from ``train`` for data sets that come without them.

A folder of class folders (``photos/<class>/*.jpg``) has one split, ``train``; nothing
could be validated or tested. ``extract --split val=0.1,test=0.1`` moves a stratified,
seeded sample of ``train`` into new splits, for any data set adapter:

    val=0.1,test=0.1   fractions of the train rows (rounded; at least one row each)
    val=50             a count of rows
    val=0.1,seed=3     another draw (default seed 0)

Each class gives its share to every carved split (a class of 30 rows gives 3 to
``val=0.1``); the draw depends only on the train rows, their labels and the seed, so a
rerun (a resumed extraction) carves the same rows. A split the data set already has is
refused: carving never renames or mixes a data set's own splits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SOURCE_SPLIT", "SplitSpec", "carve_splits", "parse_split_spec"]

#: the split held-out rows are taken from
SOURCE_SPLIT = "train"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_EXAMPLE = "e.g. --split val=0.1,test=0.1 (fractions of train) or --split val=50 (a count)"


@dataclass(frozen=True)
class SplitSpec:
    """Parsed ``--split``: each new split's fraction (float) or count (int), and the seed."""

    sizes: tuple[tuple[str, float | int], ...]
    seed: int = 0

    def counts(self, rows: int) -> dict[str, int]:
        """Rows each new split gets out of ``rows`` train rows (fractions rounded)."""
        return {n: v if isinstance(v, int) else round(v * rows) for n, v in self.sizes}


def parse_split_spec(text: str) -> SplitSpec:
    """``"val=0.1,test=0.1"`` -> SplitSpec; a one-line ValueError on any bad part."""
    sizes: dict[str, float | int] = {}
    seed = 0
    for part in (p.strip() for p in text.split(",")):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not name or not value:
            raise ValueError(f"--split {text!r}: write NAME=SIZE pairs, {_EXAMPLE}")
        if name == "seed":
            seed = _int(value, text, "seed", lo=0)
            continue
        if not _NAME.fullmatch(name) or name == SOURCE_SPLIT:
            raise ValueError(
                f"--split {text!r}: {name!r} cannot name a new split (letters, digits, "
                f"'_', '-', '.'; not {SOURCE_SPLIT!r}, the split they are carved from)"
            )
        if name in sizes:
            raise ValueError(f"--split {text!r}: split {name!r} is given twice")
        sizes[name] = _size(value, text, name)
    if not sizes:
        raise ValueError(f"--split {text!r} names no split, {_EXAMPLE}")
    fractions = sum(v for v in sizes.values() if isinstance(v, float))
    if fractions >= 1:
        raise ValueError(f"--split {text!r}: the fractions add up to {fractions:g}; keep "
                         "them under 1 so train keeps rows")  # fmt: skip
    return SplitSpec(tuple(sizes.items()), seed)


def _size(value: str, text: str, name: str) -> float | int:
    if re.fullmatch(r"\d+", value) and int(value) >= 1:
        return int(value)
    try:
        f = float(value)
    except ValueError:
        f = -1.0
    if not 0 < f < 1:
        raise ValueError(f"--split {text!r}: {name}={value} is neither a fraction in (0, 1) "
                         f"nor a count of rows >= 1, {_EXAMPLE}")  # fmt: skip
    return f


def _int(value: str, text: str, name: str, lo: int) -> int:
    if not re.fullmatch(r"\d+", value) or int(value) < lo:
        raise ValueError(f"--split {text!r}: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def carve_splits(
    by_split: Mapping[str, Sequence[int]], labels: np.ndarray, spec: SplitSpec | str
) -> dict[str, list[int]]:
    """``by_split`` (a data set's split -> rows) with ``spec``'s splits moved out of train.

    ``labels``: every row's label (-1, no label, counts as a class of its own). Rows keep
    their numbers; each split's rows come back sorted; carved splits follow the others.
    """
    spec = parse_split_spec(spec) if isinstance(spec, str) else spec
    have = list(by_split)
    clash = [n for n, _ in spec.sizes if n in by_split]
    if clash:
        raise ValueError(f"--split: the data set already has split(s) {clash} (it has "
                         f"{have}); carve only the splits it lacks, or drop --split")  # fmt: skip
    if SOURCE_SPLIT not in by_split:
        raise ValueError(f"--split carves from a {SOURCE_SPLIT!r} split, but the data set "
                         f"has {have}; drop --split")  # fmt: skip
    train = np.asarray(by_split[SOURCE_SPLIT], dtype=np.int64)
    counts = spec.counts(len(train))
    _check_counts(counts, len(train))
    order = train[_stratified_order(np.asarray(labels)[train], spec.seed)]
    out = {k: list(v) for k, v in by_split.items()}
    start = 0
    for name, n in counts.items():
        out[name] = sorted(order[start : start + n].tolist())
        start += n
    out[SOURCE_SPLIT] = sorted(order[start:].tolist())
    return out


def _check_counts(counts: dict[str, int], rows: int) -> None:
    empty = [n for n, c in counts.items() if c < 1]
    if empty:
        raise ValueError(f"--split: {empty[0]} would get no row of the {rows} train rows; "
                         f"give a larger fraction or a count, e.g. {empty[0]}=1")  # fmt: skip
    if sum(counts.values()) >= rows:
        raise ValueError(f"--split takes {sum(counts.values())} rows ({counts}) but train has "
                         f"{rows}: train must keep at least one; give smaller sizes")  # fmt: skip


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions of ``labels`` in an order whose every prefix holds each class in
    proportion: class c's rows, shuffled, sit at evenly spaced ranks (i + u_c) / n_c."""
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where[rng.permutation(len(where))]] = (np.arange(len(where)) + rng.random()) / len(
            where
        )
    return np.lexsort((rng.random(len(labels)), rank))
