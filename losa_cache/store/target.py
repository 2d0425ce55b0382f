"""Where a store may be created: never where something of the user's could be lost.

``extract`` and ``import`` used to open their target with zarr's mode "w", which deletes
everything under the path: a folder of notes, the data set's own images, ``.``. Now a
store is created only at a missing path, in an empty folder (kept as it is), or over the
remains of our own interrupted creation or import, which carry :data:`PARTIAL_ATTR` from
the write that created their root. Anything else is refused with what it holds.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import zarr

from losa_cache.store import schema as S
from losa_cache.store.store import (
    StoreError,
    is_remote,
    local_path,
    open_group,
    storage_options_for,
)

#: root attribute of a store while it is created or imported: a folder holding it is
#: ours to clear and redo, and not yet a store (no ``losa_cache`` manifest)
PARTIAL_ATTR = "losa_cache_partial"
#: the writer lease of a store at a bucket root lives inside it (store/lease.py)
BUCKET_ROOT_LEASE = ".losa-cache.lock"
#: what a store's folder holds at its top: anything else is the user's
_TOP = (S.FEATURES, S.SOURCE, S.STATUS, S.ERROR, S.SPLITS, S.TASKS, S.DONE, S.CHECKSUMS)
OURS = frozenset({"zarr.json"} | {name.split("/")[0] for name in _TOP})


def create_root(
    path: str, by: str, storage_options: dict | None = None, replace: bool = False
) -> zarr.Group:
    """The root group of a new store, marked as ours (:data:`PARTIAL_ATTR`) in the same
    write that creates it. Clears only our own: the remains of an interrupted creation
    or import, or with ``replace`` a losa-cache store."""
    kind = inspect_target(path, storage_options)
    if kind == "store" and not replace:
        raise StoreError(
            f"{path} already holds a losa-cache store; rerun the command that made it to "
            "resume, or choose another path"
        )
    foreign = _foreign_files(path, storage_options) if kind != "new" else []
    if foreign:  # "w" below would delete them with the store
        raise StoreError(
            f"{path} is a losa-cache store that also holds {_listing(foreign)}; replacing it "
            "would delete those: move them out (or choose another path), then rerun"
        )
    # "w" deletes everything under path; "a" creates (in an empty folder, kept as it is)
    mode = "a" if kind == "new" else "w"
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs = {PARTIAL_ATTR: {"by": by, "since": since}}
    return open_group(path, mode=mode, storage_options=storage_options, attributes=attrs)


def inspect_target(path: str, storage_options: dict | None = None) -> str:
    """What is at ``path``: "new" (nothing, or an empty folder), "store" (a losa-cache
    store) or "partial" (our interrupted creation or import). Refuses an empty path, a
    file, and a non-empty folder that is not ours: we never write into the user's files."""
    if not str(path).strip():
        raise StoreError("the store path is empty: give a folder for the store, e.g. run.zarr")
    entries = _entries(path, storage_options)
    if not entries:
        return "new"
    attrs = root_attrs(path, storage_options)
    if S.ROOT_ATTR in attrs:
        return "store"
    foreign = [e for e in entries if e not in OURS]
    if PARTIAL_ATTR in attrs and not foreign:
        return "partial"
    if PARTIAL_ATTR in attrs:  # redoing it clears the folder: never with files of yours
        raise StoreError(
            f"{path} holds an interrupted store creation and also {_listing(foreign)}; "
            "move those out (or choose another path), then rerun"
        )
    raise StoreError(
        f"{path} is not empty and not a losa-cache store (it holds {_listing(entries)}); "
        "refusing to write into it: choose a new or empty folder for the store"
    )


#: a file a store's zarr writes: metadata, chunks/shards (``c/<i>/<j>``) and zarr's
#: ``.<uuid>.partial`` files of an interrupted write
_ZARR_FILE = re.compile(
    r"(?:.+/)?(?:zarr\.json|zarr\.[0-9a-f]{32}\.partial|"
    r"c(?:/\d+)*(?:\.[0-9a-f]{32}\.partial)?)"
)


def _foreign_files(path: str, storage_options: dict | None) -> list[str]:
    """What under ``path`` is not the store's own: top-level entries and (local stores)
    files anywhere inside that zarr did not write, e.g. ``features/notes.txt``."""
    entries = _entries(path, storage_options)
    foreign = [e for e in entries if e not in OURS]
    if is_remote(path):
        return foreign
    root = Path(local_path(path))
    for top in sorted(set(entries) & OURS - {"zarr.json"}):
        for folder, _dirs, files in os.walk(root / top):
            for name in files:
                rel = Path(folder, name).relative_to(root).as_posix()
                if not _ZARR_FILE.fullmatch(rel):
                    foreign.append(rel)
    return foreign


def _listing(names: list[str]) -> str:
    more = f", ... ({len(names)} entries)" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _entries(path: str, storage_options: dict | None) -> list[str]:
    """Names directly under ``path`` (none if it does not exist); refuses a file."""
    if is_remote(path):
        import fsspec

        fs, root = fsspec.url_to_fs(path, **(storage_options_for(path, storage_options) or {}))
        fs.invalidate_cache(root)
        if fs.isfile(root):
            raise StoreError(f"{path} is a file, not a folder: give a folder path for the store")
        try:
            names = {PurePosixPath(p).name for p in fs.ls(root, detail=False)}
        except FileNotFoundError:
            return []
        return sorted(names - {BUCKET_ROOT_LEASE})
    folder = Path(local_path(path))
    if folder.exists() and not folder.is_dir():
        raise StoreError(
            f"{path} is a file, not a folder: give a folder path for the store "
            f"(e.g. {folder.with_suffix('.zarr')})"
        )
    if folder.is_dir():
        return sorted(os.listdir(folder))
    above = next((p for p in folder.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise StoreError(f"{path}: {above} is a file, not a folder; choose another store path")
    return []


def root_attrs(path: str, storage_options: dict | None) -> dict[str, Any]:
    """The root group's attributes; empty where ``path`` holds no readable Zarr group."""
    try:
        return open_group(path, mode="r", storage_options=storage_options).attrs.asdict()
    except (
        FileNotFoundError,
        ValueError,  # unparsable zarr.json
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ):
        return {}
