"""Attach labellings to an existing store from a `<source> <label>` text file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from losa_cache.data.base import warn_if_one_class
from losa_cache.data.files import LabelLine, is_int, looks_numeric, read_lines, unique_label_lines
from losa_cache.store.store import StoreError, add_task, open_store


def read_label_file(path: Path) -> list[tuple[str, str]]:
    """Lines `<source> <label>` (the source may contain spaces; the label is the last field).

    UTF-8 (a BOM is dropped); exact repeats are kept once, two labels for one source and
    numbers that are not integers (``1.5``) are refused naming the line (see data.files).
    """
    if not Path(path).is_file():
        raise StoreError(f"labels file {path} does not exist")
    lines = []
    for n, line in read_lines(Path(path)):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise StoreError(f"{path}:{n}: expected `<source> <label>`, got {line!r}")
        if looks_numeric(parts[1]) and not is_int(parts[1]):
            raise StoreError(
                f"{path}:{n}: label must be an integer or a class name, got {parts[1]!r}"
            )
        lines.append(LabelLine(parts[0], parts[1], f"{path}:{n}"))
    if not lines:
        raise StoreError(f"labels file {path} has no `<source> <label>` lines")
    pairs = [(x.source, x.label) for x in unique_label_lines(lines)]
    warn_if_one_class({v for _, v in pairs}, str(path))
    return pairs


def encode_labels(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Integer labels stay as given (classes '0'..'K-1'); names become sorted classes."""
    if all(v.lstrip("-").isdigit() for v in values):
        ints = np.array([int(v) for v in values], dtype=np.int32)
        if ints.min() < 0:
            raise StoreError("integer labels must be >= 0 (leave a row out to mark it unlabelled)")
        return ints, [str(i) for i in range(int(ints.max()) + 1)]
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int32), classes


def add_task_from_file(
    store_path: str, name: str, labels_file: Path, overwrite: bool = False
) -> dict[str, Any]:
    """Map sources in the file to store rows and write the task; unknown sources are an error."""
    store = open_store(store_path)
    pairs = read_label_file(labels_file)
    row_of = {str(s): i for i, s in enumerate(store.sources)}
    missing = [s for s, _ in pairs if s not in row_of]
    if missing:
        example = next(iter(row_of), "")
        raise StoreError(
            f"{len(missing)} source(s) in {labels_file} are not rows of this store, e.g. "
            f"{missing[:3]}; sources are recorded like {example!r} (see `losa-cache info --json`)"
        )
    values, classes = encode_labels([v for _, v in pairs])
    labels = np.full(store.num_images, -1, dtype=np.int32)
    labels[[row_of[s] for s, _ in pairs]] = values
    add_task(store_path, name, labels, classes, source=str(labels_file), overwrite=overwrite)
    return {"task": name, "rows": store.num_images, "labelled": len(pairs), "classes": classes}
