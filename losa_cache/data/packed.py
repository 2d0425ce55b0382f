"""Plumbing shared by adapters whose images are bytes inside bigger files (``wds:``, ``hf:``).

Such a spec carries its options in the spec string itself, so the one string recorded in a
store (and passed to resumed runs, Dask workers, ``train --live`` and ``predict``) says
everything about the rows::

    wds:train=/d/tr-{000..009}.tar,val=/d/va-000.tar,label-key=json:label
    hf:/data/cifar10,image-column=img,label-column=label

Items are separated by commas outside braces (``{000..009}``, ``{a,b}`` stay whole);
``NAME=VALUE`` items whose NAME is a known option set it, other ``NAME=`` items name a
split (``wds:``), and bare items are paths. Rows decode through :func:`open_rgb` like
every other adapter, under the row's own name.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from losa_cache.data.base import DatasetError, ImageDecodeError
from losa_cache.data.decode import open_rgb
from losa_cache.data.files import FileDataset
from losa_cache.data.folder import SPLIT_FOLDERS

#: splits that come first, in this order (others follow in the order they were met)
SPLIT_ORDER = ("train", "val", "test")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DatasetError(
            f"{what} needs the {module!r} package: pip install 'losa-cache[{extra}]'"
        ) from None


def spec_items(arg: str) -> list[str]:
    """Split a spec argument on the commas that are not inside braces."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(arg):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(arg[start:i])
            start = i + 1
    items.append(arg[start:])
    return [item.strip() for item in items if item.strip()]


@dataclass(frozen=True)
class SpecArgs:
    """A spec argument read into paths (with a split name or None) and options."""

    paths: list[tuple[str | None, str]]
    options: dict[str, str]


def parse_args(spec: str, arg: str, options: Sequence[str], named_paths: bool) -> SpecArgs:
    """Read ``arg``; ``NAME=`` items are options when NAME is one, else split names
    (refused unless ``named_paths``). Each option at most once."""
    paths: list[tuple[str | None, str]] = []
    found: dict[str, str] = {}
    for item in spec_items(arg):
        name, eq, value = item.partition("=")
        if not eq or not _NAME.fullmatch(name):
            paths.append((None, item))
            continue
        if name in options:
            if name in found:
                raise DatasetError(f"{spec!r}: option {name}= is given twice")
            found[name] = value.strip()
        elif named_paths:
            paths.append((split_name(name), value.strip()))
        else:
            raise DatasetError(f"{spec!r}: unknown option {name}=; valid: {', '.join(options)}")
    if not paths:
        raise DatasetError(f"{spec!r}: no path given")
    return SpecArgs(paths, found)


def split_name(raw: str) -> str:
    """One name per split across adapters: ``validation`` is ``val`` (as in imagefolder:)."""
    return SPLIT_FOLDERS.get(raw, raw)


def split_order(names: Sequence[str]) -> list[str]:
    """train, val, test first; other splits after them, in the order given."""
    unique = list(dict.fromkeys(names))
    return [s for s in SPLIT_ORDER if s in unique] + [s for s in unique if s not in SPLIT_ORDER]


def index_values(values: Sequence[int | str | None], where: str) -> tuple[list[int], list[str]]:
    """Raw labels (integers or class names; None or -1 = unlabelled) -> (labels, classes).

    Integers keep their value when they are 0..K-1 (names "0".."K-1"), else become their
    rank among the distinct values; names are sorted (as class folders are). A mix of both
    is refused: it would silently make "3" and 3 two classes.
    """
    values = [None if v == -1 and isinstance(v, int) else v for v in values]
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int, str}:
        raise DatasetError(f"{where}: labels mix integers and class names; use one kind")
    distinct = sorted({v for v in values if v is not None})  # type: ignore[type-var]
    if kinds == {int} and distinct and min(distinct) < 0:  # type: ignore[operator]
        raise DatasetError(f"{where}: label {distinct[0]} is negative; labels are >= 0")
    position = {v: i for i, v in enumerate(distinct)}
    return [-1 if v is None else position[v] for v in values], [str(v) for v in distinct]


def decode(data: bytes, source: str, max_pixels: int | None) -> Image.Image:
    """:func:`open_rgb` on in-memory bytes; its error names ``source``, not ``<bytes>``."""
    try:
        return open_rgb(data, max_pixels=max_pixels)
    except ImageDecodeError as err:
        raise ImageDecodeError(source, err.reason) from err


def byte_limit(dataset: object) -> int | None:
    """The bound on one image's bytes: the data set's ``max_file_bytes`` (set by
    ``get_dataset`` where the file opener has one), else the opener's default."""
    limit = getattr(dataset, "max_file_bytes", None)
    if limit is not None:
        return int(limit)
    try:
        from losa_cache.data.opener import DEFAULT_MAX_FILE_BYTES
    except ImportError:  # a file opener without a bound
        return None
    return DEFAULT_MAX_FILE_BYTES


def check_size(size: int, limit: int | None, source: str) -> None:
    """Refuse an image of more than ``limit`` bytes before it is read (a skipped row)."""
    if limit is not None and size > limit:
        raise ImageDecodeError(
            source, f"{size:,} bytes is over the limit of {limit:,} (max_file_bytes); raise "
            "it if the data is trusted"
        )  # fmt: skip


class PackedDataset(FileDataset):
    """A :class:`FileDataset` whose rows are byte ranges of bigger files, not files.

    ``root`` is the common folder (or URL prefix) the sources are relative to;
    ``max_pixels`` is set by ``get_dataset`` as for file adapters. Subclasses say which
    file each row is read from (:meth:`row_parts`), so Dask tasks can be split by it.
    """

    def path(self, index: int) -> Path:
        raise TypeError(f"{self.spec}: row {index} is inside a packed file, not a file")

    def row_parts(self) -> np.ndarray:
        """The index of the file (tar shard, parquet file) each row is read from."""
        raise NotImplementedError
