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
from losa_cache.store.errors import StoreError
from losa_cache.store.fs import is_remote, local_path, open_group, storage_options_for

#: root attribute of a store while it is created or imported: a folder holding it is
#: ours to clear and redo, and not yet a store (no ``losa_cache`` manifest)
PARTIAL_ATTR = "losa_cache_partial"
#: the writer lease of a store at a bucket root lives inside it (store/lease.py)
BUCKET_ROOT_LEASE = ".losa-cache.lock"
#: what a store's folder holds at its top: anything else is the user's. Every tap's group
#: is listed (schema.TAP_GROUPS), so a creation cut off after ``embed/`` or ``sum/`` was
#: made is still recognised as ours and redone.
_TOP = (S.SOURCE, S.STATUS, S.ERROR, S.SPLITS, S.TASKS, S.DONE, S.CHECKSUMS,
        *S.TAP_GROUPS.values())  # fmt: skip
OURS = frozenset({"zarr.json"} | {name.split("/")[0] for name in _TOP})
#: zarr's LocalStore writes every object aside first (``zarr.json`` -> ``zarr.<32 hex>.partial``)
#: and renames it: a kill in between leaves this file, ours too
_ZARR_TEMP = re.compile(r"[^/]*\.[0-9a-f]{32}\.partial")


def is_ours(entry: str) -> bool:
    """Whether a top-level entry of a store's folder is one this tool writes."""
    return entry in OURS or _ZARR_TEMP.fullmatch(entry) is not None


def create_root(
    path: str, by: str, storage_options: dict | None = None, replace: bool = False
) -> zarr.Group:
    """The root group of a new store, marked as ours (:data:`PARTIAL_ATTR`) in the same
    write that creates it. Clears only our own: the remains of an interrupted creation
    or import, or with ``replace`` a losa-cache store; one that holds files of the user's
    (beside its arrays or inside them) is refused, naming them.

    Resumable from any point: the root is first re-marked as partial (one atomic write),
    then our entries are deleted, the root's ``zarr.json`` never: a kill anywhere leaves
    a folder that the next run recognises as ours and redoes."""
    kind = inspect_target(path, storage_options)
    if kind == "store" and not replace:
        raise StoreError(
            f"{path} already holds a losa-cache store; rerun the command that made it to "
            "resume, or choose another path"
        )
    foreign = _foreign_files(path, storage_options) if kind != "new" else []
    if foreign:  # clearing the old store's entries would delete them with it
        raise StoreError(
            f"{path} is a losa-cache store that also holds {_listing(foreign)}; replacing it "
            "would delete those: move them out (or choose another path), then rerun"
        )
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    attrs = {PARTIAL_ATTR: {"by": by, "since": since}}
    if kind == "new":  # "a" creates, in an empty folder kept as it is
        return open_group(path, mode="a", storage_options=storage_options, attributes=attrs)
    group = _partial_root(path, attrs, storage_options)
    _clear_ours(group)
    return group


def _partial_root(path: str, attrs: dict[str, Any], storage_options: dict | None) -> zarr.Group:
    """The root group, its attributes replaced by ``attrs`` in one write (a root whose
    ``zarr.json`` never landed, or does not parse, is written anew)."""
    try:
        group = open_group(path, mode="r+", storage_options=storage_options)
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError,
            zarr.errors.NodeTypeValidationError):  # fmt: skip
        return open_group(path, mode="w", storage_options=storage_options, attributes=attrs)
    group.attrs.put(attrs)
    return group


def _clear_ours(group: zarr.Group) -> None:
    """Delete every entry of ours under the root but its ``zarr.json``."""
    from zarr.core.sync import sync

    store = group.store_path.store
    prefix = group.store_path.path
    for entry in _listdir(group):
        if entry == "zarr.json" or not is_ours(entry):
            continue
        key = f"{prefix}/{entry}" if prefix else entry
        if _ZARR_TEMP.fullmatch(entry):
            sync(store.delete(key))
        else:
            sync(store.delete_dir(key))


def _listdir(group: zarr.Group) -> list[str]:
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return [k async for k in group.store_path.store.list_dir(group.store_path.path)]

    return sorted(sync(collect()))


def inspect_target(path: str, storage_options: dict | None = None) -> str:
    """What is at ``path``: "new" (nothing, or an empty folder), "store" (a losa-cache
    store) or "partial" (our interrupted creation or import). Refuses an empty path, a
    file, and a non-empty folder that is not ours: we never write into the user's files."""
    if not str(path).strip():
        raise StoreError("the store path is empty: give a folder for the store, e.g. run.zarr")
    refuse_inside_a_store(path)
    entries = _entries(path, storage_options)
    if not entries:
        return "new"
    attrs = root_attrs(path, storage_options)
    if S.ROOT_ATTR in attrs:
        return "store"
    foreign = [e for e in entries if not is_ours(e)]
    if PARTIAL_ATTR in attrs and not foreign:
        return "partial"
    if not foreign and not any(e in OURS for e in entries):
        # only zarr's write-aside files: the very first write (the root's zarr.json) was
        # cut off before its rename, so nothing else of the creation exists yet
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
    foreign = [e for e in entries if not is_ours(e)]
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


def refuse_inside_a_store(path: str) -> None:
    """A store is never created inside another store's folder: its arrays would mix with
    that store's, and ``export``/``verify`` of the outer store would take it for its own."""
    if is_remote(path):
        return
    folder = Path(local_path(path)).absolute()
    for above in folder.parents:
        meta = above / "zarr.json"
        if meta.is_file() and S.ROOT_ATTR in root_attrs(str(above), None):
            raise StoreError(
                f"{path} is inside the losa-cache store {above}: choose a path outside it"
            )


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
