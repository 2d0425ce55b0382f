"""Labellings of a store: task names, and adding or replacing a task safely.

A task name is one safe path segment (:data:`TASK_NAME_RULE`): it becomes the array
``tasks/<name>``, so ``""`` would be the ``tasks/`` group itself and ``a/b`` a child of
task ``a``. A labelling change is serialised by the store's writer lock (six concurrent
``tasks add`` all land) and atomic: the new labels are written aside, then one write of
the root attributes (the manifest) switches to them, and only then is the old array
removed. A change killed at any point leaves the old or the new labelling, never none;
what a killed change left behind is removed by the next one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from losa_cache.fields import option
from losa_cache.outdir import SEGMENT_RULE, is_safe_segment
from losa_cache.store import schema as S
from losa_cache.store.lease import LABELLING, store_lock
from losa_cache.store.store import (
    FeatureStore,
    StoreError,
    open_group,
    open_store,
    storage_errors,
    write_task,
)

#: The rule for task names, quoted by README, ``tasks add --help`` and every refusal.
TASK_NAME_RULE = SEGMENT_RULE
#: an array under tasks/ that a labelling change wrote: ``<name>`` or ``<name>~<k>``
_TASK_ARRAY = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})(~[0-9]+)?")


def check_task_name(name: str) -> str:
    """Return ``name`` if it is one safe path segment that no file of a store uses (e.g.
    ``zarr.json``), else refuse with the rule."""
    if is_safe_segment(name) and not S.is_reserved_name(name):
        return name
    hint = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.-")[:64] or "task1"
    if S.is_reserved_name(name):
        raise StoreError(
            f"task name {name!r} is not allowed: a store's own files use it; use "
            f"{TASK_NAME_RULE}, other than zarr.json and names ending in .partial"
        )
    raise StoreError(f"task name {name!r} is not allowed: use {TASK_NAME_RULE} (e.g. {hint!r})")


# ------------------------------------------------------------------------------ labels file


def read_label_file(path: Path) -> list[tuple[str, str]]:
    """Lines `<source> <label>` (the source may contain spaces; the label is the last field).

    UTF-8 (a BOM is dropped); exact repeats are kept once, two labels for one source and
    numbers that are not integers (``1.5``) are refused naming the line (see data.files).
    """
    # losa_cache.data imports PIL: kept out of the store's import, which a lean device
    # install (training from a store, no image stack) needs
    from losa_cache.data.base import warn_if_one_class
    from losa_cache.data.files import (
        LabelLine,
        is_int,
        looks_numeric,
        read_lines,
        unique_label_lines,
    )

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
    store_path: str,
    name: str,
    labels_file: Path,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Map sources in the file to store rows and write the task; unknown sources are an error."""
    check_task_name(name)
    store = open_store(store_path, storage_options)
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
    add_task(store_path, name, labels, classes, str(labels_file), overwrite, storage_options)
    return {"task": name, "rows": store.num_images, "labelled": len(pairs), "classes": classes}


# ------------------------------------------------------------------------------ store side


def add_task(
    path: str | Path,
    name: str,
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    source: str = "",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> None:
    """Attach a labelling (N,) to an existing store (features are not touched), or replace
    one with ``overwrite``: serialised by the store's lock, switched atomically."""
    check_task_name(name)
    labels = np.asarray(labels, dtype=np.int32)
    with (
        storage_errors(path, "rerun the same command"),
        store_lock(str(path), storage_options, purpose=LABELLING),
    ):
        group = open_group(path, mode="r+", storage_options=storage_options)
        store = FeatureStore(group, str(path))  # read under the lock: no lost update
        _check_labels(store, name, labels, len(classes))
        _check_new_name(store, name, overwrite)
        manifest = store.manifest
        array = _free_array(group, name)
        write_task(group, name, labels, classes, source, array)
        if name not in manifest.tasks:
            manifest.tasks.append(name)
        manifest.task_arrays.pop(name, None)
        if array != S.task_name(name):
            manifest.task_arrays[name] = array
        group.attrs[S.ROOT_ATTR] = manifest.to_dict()  # the switch: one atomic write
        _remove_unused(group, manifest)


def _check_labels(store: FeatureStore, name: str, labels: np.ndarray, num_classes: int) -> None:
    if labels.shape != (store.num_images,):
        raise StoreError(
            f"task {name!r}: {labels.shape[0]} labels for a store of {store.num_images} rows"
        )
    if labels.max(initial=-1) >= num_classes or labels.min(initial=0) < -1:
        raise StoreError(f"task {name!r}: labels must be -1 (none) or in [0, {num_classes})")


def _check_new_name(store: FeatureStore, name: str, overwrite: bool) -> None:
    if name in store.tasks:
        if not overwrite:
            raise StoreError(f"task {name!r} already exists; pass --overwrite to replace it")
        return
    twin = next((t for t in store.tasks if t.casefold() == name.casefold()), None)
    if twin is not None:  # one folder on case-insensitive file systems (macOS, Windows)
        raise StoreError(
            f"task {name!r} differs from the existing task {twin!r} only in case, and would "
            f"share its folder on case-insensitive disks; choose another name, or replace "
            f"{twin!r} with --overwrite"
        )


def _free_array(group: zarr.Group, name: str) -> str:
    """Where the new labels go: tasks/<name> if nothing is there, else tasks/<name>~<k>."""
    taken = set(_task_nodes(group, arrays_only=False))
    candidates = (S.task_name(name), *(f"{S.task_name(name)}~{k}" for k in range(1, 10**6)))
    return next(a for a in candidates if a not in taken)


def _remove_unused(group: zarr.Group, manifest: S.Manifest) -> None:
    """Drop task arrays no task points to: a replaced labelling, or what a killed change
    wrote before its switch. Only arrays named as a labelling change names them go
    (never a group: a store from before the name rule may hold ``tasks/a/b``)."""
    used = {manifest.task_path(t) for t in manifest.tasks}
    for array in _task_nodes(group, arrays_only=True):
        if array not in used and _TASK_ARRAY.fullmatch(array.split("/", 1)[1]):
            del group[array]


def _task_nodes(group: zarr.Group, arrays_only: bool) -> list[str]:
    """Paths of the nodes directly under tasks/ (arrays only, or arrays and groups)."""
    tasks = group.get(S.TASKS)
    if not isinstance(tasks, zarr.Group):
        return []
    names = tasks.array_keys() if arrays_only else (k for k, _ in tasks.members())
    return [f"{S.TASKS}/{k}" for k in names]


@dataclass
class TaskAddConfig:
    """``losa-cache tasks add``: a labelling file to attach to a store as a new task."""

    store: str = option(help="Store path or URL.", argument=True)
    name: str = option(
        help="Task name: 1-64 characters from letters, digits, '_', '-' and "
        "'.', starting with a letter or digit."
    )
    labels: str = option(help="File of `<source> <label>` lines.")
    overwrite: bool = option(False, "Replace a task of the same name.")

    def __post_init__(self) -> None:
        check_task_name(self.name)
