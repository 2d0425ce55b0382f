"""Plumbing shared by the adapters whose images are files under one root folder.

Sources are stored relative to the root (POSIX separators) so a store records portable
names; :class:`FileDataset` joins them back to the root to decode. List-style adapters
(VTAB-1k, list files) build their rows with :func:`rows_from_entries`, which is where
the "a row is stored once, however many splits name it" rule lives.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from losa_cache.data.base import DatasetError, DatasetNotFoundError, ImageDataset, Sample
from losa_cache.data.decode import open_rgb
from losa_cache.data.opener import MAX_TEXT_BYTES, FileRefused, printable, read_regular

#: File suffixes taken as images (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)


@dataclass(repr=False)
class FileDataset(ImageDataset):
    """Images stored as files; ``samples[i].source`` is relative to ``root`` (or absolute)."""

    root: str = ""
    #: Explicit split -> rows mapping, for adapters whose splits overlap; None = from samples.
    split_rows: dict[str, list[int]] | None = field(default=None)
    #: Largest image decoded (width x height); None = :data:`DEFAULT_MAX_PIXELS`.
    max_pixels: int | None = None
    #: Largest file read, in bytes; None = the kind's default (data/opener.py).
    max_file_bytes: int | None = None

    def path(self, index: int) -> Path:
        """Where row ``index`` lives on disk."""
        return Path(self.root) / self.samples[index].source

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.path(index), max_pixels=self.max_pixels, max_bytes=self.max_file_bytes)

    def split_indices(self) -> dict[str, list[int]]:
        if self.split_rows is None:
            return super().split_indices()
        return {name: list(rows) for name, rows in self.split_rows.items()}


@dataclass(frozen=True)
class Entry:
    """One labelled line of a list-style file, with ``where`` ("file:line") for messages."""

    source: str
    label: int
    split: str
    where: str


def normalise_source(raw: str) -> str:
    """One spelling per file ("./a//b.jpg" == "a/b.jpg") so duplicates are caught."""
    raw = raw.replace("\\", "/")
    return posixpath.normpath(raw)


def rows_from_entries(entries: Iterable[Entry]) -> tuple[list[Sample], dict[str, list[int]]]:
    """Turn list entries into unique rows (first-seen order) plus each split's rows.

    An image named by several splits becomes one row (its ``split`` = the first split that
    named it) listed under every such split. An image with two different labels is an
    error naming both lines; the same line twice in one split is kept once, with a warning.
    """
    samples: list[Sample] = []
    row_of: dict[str, int] = {}
    first_seen: dict[str, Entry] = {}
    split_rows: dict[str, list[int]] = {}
    seen_in_split: dict[tuple[str, str], str] = {}
    repeated: list[tuple[Entry, str]] = []
    for e in entries:
        first = first_seen.setdefault(e.source, e)
        if first.label != e.label:
            raise DatasetError(
                f"{e.where}: {e.source!r} has label {e.label} but label {first.label} at "
                f"{first.where}; an image must have one label, fix one of the lines"
            )
        key = (e.split, e.source)
        if key in seen_in_split:
            repeated.append((e, seen_in_split[key]))
            continue
        seen_in_split[key] = e.where
        if e.source not in row_of:
            row_of[e.source] = len(samples)
            samples.append(Sample(e.source, e.label, e.split))
        split_rows.setdefault(e.split, []).append(row_of[e.source])
    if repeated:
        warn_repeated([(e.where, first) for e, first in repeated])
    return samples, split_rows


def warn_repeated(repeats: Sequence[tuple[str, str]]) -> None:
    """One warning for lines that repeat an earlier one exactly: (where, first where)."""
    where, first = repeats[0]
    more = f" (and {len(repeats) - 1} more repeated lines)" if len(repeats) > 1 else ""
    warnings.warn(
        f"{where} repeats {first}; the image is kept once{more}", UserWarning, stacklevel=3
    )


@dataclass(frozen=True)
class LabelLine:
    """One ``<source> <label>`` line whose label may be a class name, with "file:line"."""

    source: str
    label: str
    where: str


def unique_label_lines(lines: Iterable[LabelLine]) -> list[LabelLine]:
    """Lines in order with exact repeats dropped (warned); two labels for one source, and an
    integer label over :data:`MAX_CLASS_INDEX` (a class index), refused."""
    first: dict[str, LabelLine] = {}
    repeats: list[tuple[str, str]] = []
    for line in lines:
        if is_int(line.label):
            parse_label(line.label, line.where, MAX_CLASS_INDEX)
        seen = first.setdefault(line.source, line)
        if seen is line:
            continue
        if seen.label != line.label:
            raise DatasetError(
                f"{line.where}: {line.source!r} has label {line.label!r} but {seen.label!r} at "
                f"{seen.where}; an image must have one label, fix one of the lines"
            )
        repeats.append((line.where, seen.where))
    if repeats:
        warn_repeated(repeats)
    return list(first.values())


def index_labels(
    samples: Sequence[Sample], names: Sequence[str] | None, where: str
) -> tuple[list[Sample], list[str], list[int]]:
    """Map raw integer labels to class indices: (samples, classes, raw label values).

    With ``names`` (a class-name file) raw labels already index it. Without, classes are the
    sorted distinct labels as strings and labels become positions in that list (identity for
    the usual 0..K-1). Label -1 (unlabelled) is kept as -1.
    """
    values = sorted({s.label for s in samples if s.label >= 0})
    if names is not None:
        if values and values[-1] >= len(names):
            raise DatasetError(
                f"{where}: label {values[-1]} but the class-name file has only {len(names)} "
                "names; add the missing names (one per line, line k = label k)"
            )
        return list(samples), list(names), values
    position = {v: i for i, v in enumerate(values)}
    if all(position[v] == v for v in values):
        return list(samples), [str(v) for v in values], values
    remapped = [replace(s, label=position.get(s.label, -1)) for s in samples]
    return remapped, [str(v) for v in values], values


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the meaningful lines: blanks and ``#`` comments dropped.

    UTF-8, with or without a byte-order mark (Windows editors write one; left in, it would
    become part of the first path or label).
    """
    try:
        data = read_regular(path, MAX_TEXT_BYTES, "list file")
    except FileRefused as err:
        kind = DatasetNotFoundError if err.missing else DatasetError
        raise kind(f"{err.reason}: {path}") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); save the file as "
            "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)([eE][+-]?[0-9]+)?")


def is_int(token: str) -> bool:
    """Plain decimal digits with an optional sign: not ``1_000`` or ``١`` (``int`` takes both)."""
    return _INT.fullmatch(token) is not None


def looks_numeric(token: str) -> bool:
    """A number of any spelling (``1.5``, ``1e3``, ``.5``, ``1_0``): never a class name."""
    return _NUMBER.fullmatch(token) is not None


#: Largest label value of a list file: labels are stored as int32.
MAX_LABEL = 2**31 - 1
#: Largest integer label of a ``tasks add`` file, where an integer label is a class index
#: (classes "0".."K-1"): more classes than this is a typo, not a labelling.
MAX_CLASS_INDEX = 2**20 - 1


def parse_int(token: str, where: str, what: str) -> int:
    """An integer field, or a DatasetError pointing at the line."""
    if not is_int(token):
        raise DatasetError(f"{where}: {what} must be an integer, got {token!r}")
    return int(token)


def parse_label(token: str, where: str, high: int = MAX_LABEL) -> int:
    """An integer label at most ``high`` (a DatasetError pointing at the line): 10**30 would
    overflow the int32 labels far from the line that caused it."""
    value = parse_int(token, where, "label")
    if value > high:
        raise DatasetError(f"{where}: label {token} is over the largest label {high:,}")
    return value


def is_utf8(name: str) -> bool:
    """Whether a file name can be recorded as text (UTF-8): a name from another system's
    encoding comes from the OS as lone surrogates, which no store, JSON or terminal takes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def warn_non_utf8(paths: Sequence[str | Path], what: str) -> None:
    """One warning naming the files (or folders) left out for a name that is not UTF-8."""
    if not paths:
        return
    more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
    warnings.warn(
        f"{what}: {printable(paths[0])}{more} is left out: its name is not valid UTF-8, so it "
        "cannot be recorded; rename it to UTF-8 (e.g. with convmv)",
        UserWarning,
        stacklevel=3,
    )


def require_dir(path: Path, what: str, hint: str) -> None:
    """Fail early (and say what was expected) when a data folder is missing."""
    if not path.exists():
        raise DatasetNotFoundError(f"{what} not found: {path} ({hint})")
    if not path.is_dir():
        raise DatasetError(f"{what} must be a folder, got a file: {path} ({hint})")
