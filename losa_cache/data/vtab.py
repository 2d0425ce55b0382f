"""``vtab1k:PATH/TASK``: one VTAB-1k task in the PEFT community layout (NOAH, VPT, ...).

The task folder holds ``train800.txt``, ``val200.txt``, ``train800val200.txt`` and
``test.txt``, each line ``<image path relative to the task folder> <integer label>``.
``train800val200`` is the union of the first two, so it is a derived split: its rows are
the existing train800/val200 rows (any image only it names becomes a row of its own).
Row order = the order of the list files, which is deterministic and is the order every
published loader uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from losa_cache.data.base import DatasetError, DatasetNotFoundError
from losa_cache.data.files import (
    Entry,
    FileDataset,
    index_labels,
    normalise_source,
    parse_label,
    read_lines,
    require_dir,
    rows_from_entries,
)

#: Primary splits (row order), then the derived one.
PRIMARY_SPLITS = ("train800", "val200", "test")
DERIVED_SPLIT = "train800val200"
#: Optional class names, one per line (line k = label k). Never invented when absent.
CLASSNAMES_FILE = "classnames.txt"


@dataclass(repr=False)
class Vtab1kDataset(FileDataset):
    """One VTAB-1k task; ``split_indices()`` also lists the derived ``train800val200``."""

    @classmethod
    def from_path(cls, path: str | Path, spec: str | None = None) -> Vtab1kDataset:
        root = Path(path).expanduser().resolve()
        require_dir(root, "VTAB-1k task folder", _layout_hint())
        entries = []
        for split in (*PRIMARY_SPLITS, DERIVED_SPLIT):
            entries += _read_split(root, split)
        samples, split_rows = rows_from_entries(entries)
        if DERIVED_SPLIT not in split_rows:  # file absent: the union is its definition
            split_rows[DERIVED_SPLIT] = split_rows.get("train800", []) + split_rows.get(
                "val200", []
            )
        names = _read_classnames(root)
        samples, classes, values = index_labels(samples, names, str(root / "*.txt"))
        return cls(
            spec=spec or f"vtab1k:{path}",
            samples=samples,
            classes=classes,
            task=root.name,
            meta={"label_values": values, "derived_splits": [DERIVED_SPLIT]},
            root=str(root),
            split_rows={s: split_rows.get(s, []) for s in (*PRIMARY_SPLITS, DERIVED_SPLIT)},
        )


def _layout_hint() -> str:
    files = ", ".join(f"{s}.txt" for s in (*PRIMARY_SPLITS, DERIVED_SPLIT))
    return f"a VTAB-1k task folder holds {files}, lines '<relative image path> <label>'"


def _read_split(root: Path, split: str) -> list[Entry]:
    """Entries of ``<split>.txt``; only ``train800val200.txt`` may be absent."""
    path = root / f"{split}.txt"
    if not path.exists():
        if split == DERIVED_SPLIT:
            return []
        raise DatasetNotFoundError(f"missing {path}; {_layout_hint()}")
    return [_parse_line(text, f"{path}:{n}", split) for n, text in read_lines(path)]


def _parse_line(text: str, where: str, split: str) -> Entry:
    """``<path> <label>``; the path may contain spaces (the label is the last token)."""
    parts = text.rsplit(None, 1)
    if len(parts) != 2:
        raise DatasetError(f"{where}: expected '<relative image path> <label>', got {text!r}")
    label = parse_label(parts[1], where)
    if label < 0:
        raise DatasetError(f"{where}: label must be >= 0, got {label}")
    return Entry(normalise_source(parts[0]), label, split, where)


def _read_classnames(root: Path) -> list[str] | None:
    path = root / CLASSNAMES_FILE
    if not path.exists():
        return None
    return [text for _, text in read_lines(path)]
