"""``list:FILE``: a plain text list, one image per line.

Line forms: ``<path> <label>`` (split "train") or ``<path> <label> <split>``; paths are
relative to the list file's folder unless absolute; blank lines and ``#`` comments are
ignored; label ``-1`` means unlabelled (e.g. images to predict on). An image named in
several splits is one row listed under each. Row order = line order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from losa_cache.data.base import DatasetError
from losa_cache.data.files import (
    Entry,
    FileDataset,
    index_labels,
    is_int,
    looks_numeric,
    normalise_source,
    parse_label,
    read_lines,
    rows_from_entries,
)

DEFAULT_SPLIT = "train"
_FORMS = "'<path> <label>' or '<path> <label> <split>'"


@dataclass(repr=False)
class ListFileDataset(FileDataset):
    """Images named by a text list file."""

    @classmethod
    def from_file(cls, path: str | Path, spec: str | None = None) -> ListFileDataset:
        file = Path(path).expanduser().resolve()
        entries = [_parse_line(text, f"{file}:{n}") for n, text in read_lines(file)]
        if not entries:
            raise DatasetError(f"{file} lists no images; expected lines {_FORMS}")
        samples, split_rows = rows_from_entries(entries)
        samples, classes, values = index_labels(samples, None, str(file))
        return cls(
            spec=spec or f"list:{path}",
            samples=samples,
            classes=classes,
            task=file.stem,
            meta={"label_values": values},
            root=str(file.parent),
            split_rows=split_rows,
        )


def _parse_line(text: str, where: str) -> Entry:
    """Label = last integer-looking token of the last two; paths may contain spaces.

    A number that is not an integer where the label goes (``1.5``, ``1e3``) is refused:
    read as a path or split name it would silently shift the columns.
    """
    parts = text.split()
    if len(parts) >= 2 and is_int(parts[-1]):
        path, label, split = text.rsplit(None, 1)[0], parts[-1], DEFAULT_SPLIT
    elif len(parts) >= 3 and is_int(parts[-2]) and not looks_numeric(parts[-1]):
        path, label, split = text.rsplit(None, 2)[0], parts[-2], parts[-1]
    else:
        bad = next((t for t in reversed(parts[1:][-2:]) if looks_numeric(t)), None)
        if bad is not None:
            raise DatasetError(f"{where}: label must be an integer, got {bad!r} in {text!r}")
        raise DatasetError(f"{where}: expected {_FORMS}, got {text!r}")
    value = parse_label(label, where)
    if value < -1:
        raise DatasetError(f"{where}: label must be >= 0 (or -1 = unlabelled), got {value}")
    return Entry(normalise_source(path), value, split, where)
