"""Plumbing shared by the adapters whose images are files under one root folder.

Sources are stored relative to the root (POSIX separators) so a store records portable
names; :class:`FileDataset` joins them back to the root to decode. List-style adapters
(VTAB-1k, list files) build their rows with :func:`rows_from_entries`, which is where
the "a row is stored once, however many splits name it" rule lives.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from losa_cache.data.base import DatasetError, DatasetNotFoundError, ImageDataset, Sample
from losa_cache.data.decode import open_rgb

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

    def path(self, index: int) -> Path:
        """Where row ``index`` lives on disk."""
        return Path(self.root) / self.samples[index].source

    def load(self, index: int) -> Image.Image:
        return open_rgb(self.path(index))

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
    named it) listed under every such split. The same image twice in one split, or with
    two different labels, is an error.
    """
    samples: list[Sample] = []
    row_of: dict[str, int] = {}
    first_seen: dict[str, Entry] = {}
    split_rows: dict[str, list[int]] = {}
    seen_in_split: dict[tuple[str, str], str] = {}
    for e in entries:
        key = (e.split, e.source)
        if key in seen_in_split:
            raise DatasetError(
                f"{e.where}: {e.source!r} is listed twice in split {e.split!r} (first at "
                f"{seen_in_split[key]}); remove the duplicate line"
            )
        seen_in_split[key] = e.where
        if e.source not in row_of:
            row_of[e.source] = len(samples)
            first_seen[e.source] = e
            samples.append(Sample(e.source, e.label, e.split))
        elif first_seen[e.source].label != e.label:
            first = first_seen[e.source]
            raise DatasetError(
                f"{e.where}: {e.source!r} has label {e.label} but label {first.label} at "
                f"{first.where}; an image must have one label, fix one of the lines"
            )
        split_rows.setdefault(e.split, []).append(row_of[e.source])
    return samples, split_rows


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
    """(line number, stripped text) of the meaningful lines: blanks and ``#`` comments dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"list file not found: {path}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read list file {path}: {err}; it must be UTF-8 text") from err
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)]
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def parse_int(token: str, where: str, what: str) -> int:
    """An integer field, or a DatasetError pointing at the line."""
    try:
        return int(token)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be an integer, got {token!r}") from None


def require_dir(path: Path, what: str, hint: str) -> None:
    """Fail early (and say what was expected) when a data folder is missing."""
    if not path.exists():
        raise DatasetNotFoundError(f"{what} not found: {path} ({hint})")
    if not path.is_dir():
        raise DatasetError(f"{what} must be a folder, got a file: {path} ({hint})")
