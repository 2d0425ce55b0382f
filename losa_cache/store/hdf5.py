"""Export a store to one HDF5 file and import it back, bit-exact (h5py, one writer).

For users whose tools read HDF5. Every Zarr array becomes a dataset at the same path
(strings as UTF-8 variable-length strings, bf16 stores as their uint16 bits), every
attribute also appears as an HDF5 attribute (JSON text for nested values), and the
exact ``zarr.json`` document of every node is kept in ``/_zarr_metadata`` so that
``import`` recreates the store with the same chunking, shards, codecs and attributes.

An import writes the data first, the done markers next and the root attributes (the
manifest) last: an interrupted import never looks like a finished store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from losa_cache.fields import check_fields, option
from losa_cache.oserrors import os_failure
from losa_cache.store import schema as S
from losa_cache.store.store import (
    FeatureStore,
    StoreError,
    every_chunk,
    open_group,
    storage_errors,
)
from losa_cache.store.target import create_root, inspect_target

META_DATASET = "_zarr_metadata"
FORMAT = "losa-cache zarr->hdf5 v1"
BLOCK_BYTES = 64 << 20  # rows copied per step, unsharded arrays
MAX_ATTR_BYTES = 60_000  # HDF5 compact attributes are limited to 64 KiB


def _zarr_json(node: zarr.Array | zarr.Group) -> str:
    return node.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes().decode()


def _nodes(group: zarr.Group) -> list[tuple[str, zarr.Array | zarr.Group]]:
    return sorted(group.members(max_depth=None))


def _blocks(arr: zarr.Array) -> Iterator[slice]:
    """Row ranges that are whole shards (or whole chunks): never a partial-shard write."""
    n = arr.shape[0] if arr.shape else 0
    if arr.shards is not None:
        step = arr.shards[0]
    else:
        row = max(1, arr.nbytes // max(1, n))
        step = max(arr.chunks[0], (BLOCK_BYTES // row) // arr.chunks[0] * arr.chunks[0])
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _is_str(arr: zarr.Array) -> bool:
    return np.dtype(arr.dtype).kind in "OTU" or _is_text(arr)


def _is_text(arr: zarr.Array) -> bool:
    """A schema-2 text array: UTF-8 bytes per row (HDF5 gets them as strings)."""
    return arr.ndim == 2 and str(arr.attrs.get("encoding", "")).startswith("utf-8")


def _h5_attrs(target: h5py.HLObject, attrs: dict[str, Any]) -> None:
    """Readable copies of the attributes (the exact ones live in /_zarr_metadata)."""
    for key, value in attrs.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if len(text.encode()) <= MAX_ATTR_BYTES:
            target.attrs[key] = text


def export_hdf5(
    path: str,
    out: str | Path,
    storage_options: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
    compression: str | None = None,
) -> dict[str, Any]:
    """Write the whole store at ``path`` to the HDF5 file ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; pass --overwrite to replace it")
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"unknown HDF5 compression {compression!r}; choose none, gzip or lzf")
    group = open_group(path, mode="r", storage_options=storage_options)
    FeatureStore(group, path)  # refuses a group that is not a losa-cache store
    nodes = _nodes(group)
    meta = {"": _zarr_json(group)} | {name: _zarr_json(node) for name, node in nodes}
    arrays = [(n, a) for n, a in nodes if isinstance(a, zarr.Array)]
    total = sum(a.nbytes for _, a in arrays)
    tmp = out.with_name(out.name + ".partial")
    _check_space(out, total if compression is None else 0)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="export", disable=not progress)
    try:
        with bar:
            _write_h5(tmp, group, nodes, meta, arrays, compression, bar)
        os.replace(tmp, out)  # a killed export leaves only the .partial file
    except (OSError, RuntimeError) as e:  # h5py reports a full disk as either
        with contextlib.suppress(OSError):
            tmp.unlink()  # ours: never left behind to keep the disk full
        raise _export_error(out, e) from None
    return {"store": path, "out": str(out), "arrays": len(arrays), "bytes": total}


def _write_h5(
    tmp: Path,
    group: zarr.Group,
    nodes: list,
    meta: dict[str, str],
    arrays: list,
    compression: str | None,
    bar: tqdm,
) -> None:
    """The export into ``tmp``. HDF5 meeting a failed write (a full disk) fails in its
    own clean-up, up to a segfault; so it writes through :class:`_GuardedFile`, which
    never fails a write, and the first failure is raised here after each dataset."""
    with _GuardedFile(tmp) as sink:
        with h5py.File(sink, "w") as h5:
            h5.attrs["format"] = FORMAT
            h5.create_dataset(META_DATASET, data=json.dumps(meta), dtype=h5py.string_dtype())
            _h5_attrs(h5, group.attrs.asdict())
            for name, node in nodes:
                if isinstance(node, zarr.Group):
                    _h5_attrs(h5.require_group(name), node.attrs.asdict())
            for name, arr in arrays:
                _copy_to_h5(arr, h5, name, compression, bar, sink.check)
                h5.flush()
                sink.check()
        sink.check()
        os.fsync(sink.file.fileno())


class _GuardedFile:
    """The file object HDF5 writes through: a failed write is recorded, not returned to
    HDF5 (the export is abandoned at the next :meth:`check`, which raises it)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w+b")  # noqa: SIM115 (closed by __exit__)
        self.error: OSError | None = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if self.error is None:
            try:
                return self.file.write(data)
            except OSError as e:
                self.error = e
        return size

    def readinto(self, buf: Any) -> int:
        return self.file.readinto(buf)

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.file.truncate(size)
        except OSError as e:
            self.error = self.error or e
            return size or 0

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as e:
            self.error = self.error or e

    def __enter__(self) -> _GuardedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.file.close()
        except OSError as e:
            self.error = self.error or e


#: room beyond the data for HDF5's own metadata (object headers, chunk indexes)
SPACE_MARGIN = 1 << 20


def _check_space(out: Path, data_bytes: int) -> None:
    """Refuse an export the disk cannot hold before writing a byte (uncompressed: the
    size is known); HDF5 meeting a full disk midway fails badly (errors in its clean-up)."""
    folder = out.absolute().parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # a missing folder: the write names it
    if data_bytes and free < data_bytes + SPACE_MARGIN:
        raise StoreError(
            f"cannot export to {out}: it needs about {_mib(data_bytes + SPACE_MARGIN)} and "
            f"{folder} has {_mib(free)} free; free space, or choose a path on another disk"
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _export_error(out: Path, e: BaseException) -> StoreError:
    """A failed HDF5 write as one line naming the file and the fix (the .partial file
    the export created is already removed)."""
    text = str(e)
    code = getattr(e, "errno", None)
    found = re.search(r"errno = (\d+)", text)
    if found:
        code = int(found.group(1))
    fix = os_failure(code, "path", "rerun", kept=False)
    if fix is None and isinstance(e, OSError) and code is not None:
        fix = f"{os.strerror(code)}: check the disk, then rerun"
    if fix is None:
        raise e
    return StoreError(f"cannot write {out}: {fix} (the partial file was removed)")


def _copy_to_h5(
    arr: zarr.Array,
    h5: h5py.File,
    name: str,
    compression: str | None,
    bar: tqdm,
    check: Any = lambda: None,
) -> None:
    dtype = h5py.string_dtype() if _is_str(arr) else np.dtype(arr.dtype)
    shape = arr.shape[:1] if _is_text(arr) else arr.shape
    chunks = tuple(min(c, s) for c, s in zip(arr.chunks, shape, strict=False))
    ds = h5.create_dataset(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks if all(chunks) else None,
        compression=compression if all(chunks) else None,
    )
    _h5_attrs(ds, arr.attrs.asdict())
    for rows in _blocks(arr):
        values = S.decode_text(arr[rows]) if _is_text(arr) else arr[rows]
        ds[rows] = values.astype(object) if _is_str(arr) else values
        bar.update(arr.nbytes * len(values) // arr.shape[0])
        check()  # a failed write stops the export here


def import_hdf5(
    h5_path: str | Path,
    path: str,
    storage_options: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Recreate the store exported to ``h5_path`` at ``path`` (local path or URL).

    ``path`` must be new (missing or an empty folder), the remains of an interrupted
    import, or with ``overwrite`` a losa-cache store: a folder of anything else is refused.
    """
    with _open_h5(h5_path) as h5:
        if h5.attrs.get("format") != FORMAT or META_DATASET not in h5:
            raise StoreError(f"{h5_path} is not a losa-cache HDF5 export (no {META_DATASET})")
        meta: dict[str, str] = json.loads(h5[META_DATASET].asstr()[()])
        with storage_errors(path, "rerun the same command: it redoes the partial import"):
            total = _import(h5, meta, path, storage_options, progress, overwrite)
    return {"h5": str(h5_path), "store": path, "arrays": total[0], "bytes": total[1]}


def _open_h5(h5_path: str | Path) -> h5py.File:
    try:
        return h5py.File(h5_path, "r")
    except FileNotFoundError:
        raise
    except OSError as e:  # h5py's word for "not HDF5" (no file signature) or truncated
        raise StoreError(
            f"{h5_path} is not a readable HDF5 file ({e}); give a file written by "
            "`losa-cache export`"
        ) from None


def _import(
    h5: h5py.File,
    meta: dict[str, str],
    path: str,
    storage_options: dict | None,
    progress: bool,
    overwrite: bool,
) -> tuple[int, int]:
    """Metadata of every node, the data, the done markers, the manifest last; returns
    (arrays, bytes). Until the manifest lands the root is marked as an import under way."""
    if inspect_target(path, storage_options) == "store" and not overwrite:
        raise StoreError(f"{path} already holds a losa-cache store; pass --overwrite to replace it")
    group = create_root(path, "import", storage_options, replace=overwrite)
    root = meta.pop("")
    for name in sorted(meta):
        _put(group, f"{name}/zarr.json", meta[name])
    group = open_group(path, mode="r+", storage_options=storage_options)
    names = [n for n in sorted(meta) if json.loads(meta[n])["node_type"] == "array"]
    # checksums and done markers (the extraction's and every extension's, checksums
    # first) only after the data they vouch for
    late = sorted((n for n in names if n.startswith("progress/")), key=lambda n: n.endswith("done"))
    names = [n for n in names if n not in late] + late
    total = sum(group[n].nbytes for n in names)
    with tqdm(total=total, unit="B", unit_scale=True, desc="import", disable=not progress) as b:
        for name in names:
            _copy_from_h5(h5[name], every_chunk(group[name]), b)
    _put(group, "zarr.json", root)  # the manifest last: now the store is whole
    return len(names), total


def _put(group: zarr.Group, key: str, text: str) -> None:
    """Write one metadata document verbatim through the group's store."""
    buf = default_buffer_prototype().buffer.from_bytes(text.encode())
    sync((group.store_path / key).set(buf))


def _copy_from_h5(ds: h5py.Dataset, arr: zarr.Array, bar: tqdm) -> None:
    if ds.shape != (arr.shape[:1] if _is_text(arr) else arr.shape):
        raise StoreError(f"{ds.name}: HDF5 shape {ds.shape} != metadata shape {arr.shape}")
    is_str = _is_str(arr)
    for rows in _blocks(arr):
        values = ds.asstr()[rows] if is_str else ds[rows]
        arr[rows] = S.text_for(arr, values) if is_str else values
        bar.update(arr.nbytes * len(values) // max(1, arr.shape[0]))


@dataclass
class ExportConfig:
    """``losa-cache export``: a whole store into one HDF5 file."""

    store: str = option(help="Store path or URL.", argument=True)
    out: str = option(help="HDF5 file to write.", argument=True)
    format: str = option("hdf5", "Output format.", choices=("hdf5",))
    compression: str | None = option(
        None, "HDF5 compression (default: none).", choices=("gzip", "lzf")
    )
    overwrite: bool = option(False, "Replace an existing file.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ImportConfig:
    """``losa-cache import``: a store recreated from an HDF5 export."""

    h5: str = option(help="HDF5 file written by `losa-cache export`.", argument=True)
    store: str = option(help="Store path or URL to create (a new or empty folder).", argument=True)
    overwrite: bool = option(False, "Replace an existing losa-cache store (never other files).")

    def __post_init__(self) -> None:
        if not Path(self.h5).is_file():
            raise FileNotFoundError(f"no HDF5 file at {self.h5}")
