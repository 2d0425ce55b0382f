"""Creating stores and writing whole shards: idempotent, checksummed, resumable.

A shard is written as: every feature array's rows, then status/error, then its
checksums, and only then its done marker. A killed run or a full disk therefore
never leaves a shard that reads as done; rerunning rewrites exactly the shards
without a marker.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr

from losa_cache.store import schema as S
from losa_cache.store.lease import store_lock
from losa_cache.store.store import (
    FeatureStore,
    StoreError,
    open_group,
    write_task,
)


def per_shard_arrays(layout: S.Layout) -> list[str]:
    """Arrays written shard by shard, in checksum column order."""
    return [S.feature_name(layer) for layer in layout.layers] + [S.STATUS, S.ERROR]


def checksum(values: np.ndarray) -> int:
    """blake2b-64 of an array's bytes (strings hashed as NUL-joined UTF-8)."""
    if values.dtype.kind in "OUT":
        data = "\0".join(map(str, values.tolist())).encode()
    else:
        data = np.ascontiguousarray(values).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def create_store(
    path: str,
    layout: S.Layout,
    manifest: S.Manifest,
    sources: list[str],
    splits: dict[str, list[int]],
    tasks: dict[str, tuple[np.ndarray, list[str]]],
    storage_options: dict | None = None,
) -> zarr.Group:
    """Create every array and the manifest. Only the coordinating process calls this."""
    group = open_group(path, mode="w", storage_options=storage_options)
    codec = S.CODECS[manifest.codec]
    for layer in layout.layers:
        group.create_array(
            S.feature_name(layer),
            shape=(layout.num_images, layout.tokens, layout.dim),
            dtype=S.DTYPES[layout.dtype][0],
            chunks=(layout.chunk_rows, layout.tokens, layout.dim),
            shards=(layout.shard_rows, layout.tokens, layout.dim),
            compressors=[codec] if codec is not None else None,
            fill_value=0,
        )
    n, rows = layout.num_images, layout.shard_rows
    group.create_array(S.STATUS, shape=(n,), dtype="uint8", chunks=(rows,), fill_value=S.PENDING)
    group.create_array(S.ERROR, shape=(n,), dtype=str, chunks=(rows,), fill_value="")
    src = group.create_array(S.SOURCE, shape=(n,), dtype=str, chunks=(max(1, n),), fill_value="")
    src[:] = np.asarray(sources, dtype=str)
    for name, idx in splits.items():
        arr = group.create_array(
            S.split_name(name),
            shape=(len(idx),),
            dtype="int64",
            chunks=(max(1, len(idx)),),
            fill_value=-1,
        )
        arr[:] = np.asarray(idx, dtype=np.int64)
    for name, (labels, classes) in tasks.items():
        write_task(group, name, labels, classes, source="dataset")
    s, a = layout.num_shards, len(per_shard_arrays(layout))
    group.create_array(S.DONE, shape=(s,), dtype="uint8", chunks=(1,), fill_value=0)
    group.create_array(S.CHECKSUMS, shape=(s, a), dtype="uint64", chunks=(1, a), fill_value=0)
    manifest.state = "ready"  # written last: a store without it was cut off mid-creation
    group.attrs[S.ROOT_ATTR] = manifest.to_dict()
    return group


def identity_diff(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two identities (nested dicts)."""
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += identity_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: store has {_short(a)}, this run has {_short(b)}")
    return diffs


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def open_for_resume(
    path: str, identity: dict[str, Any], storage_options: dict | None = None
) -> FeatureStore | None:
    """The existing store if it matches ``identity``; None if there is none (or only
    the remains of an interrupted creation, which nothing was written into)."""
    try:
        group = open_group(path, mode="r+", storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    meta = group.attrs.asdict().get(S.ROOT_ATTR)
    if meta is None:
        if list(group.keys()):
            raise StoreError(
                f"{path} holds a Zarr group that is not a losa-cache store; "
                "refusing to overwrite it: choose another --store path"
            )
        return None
    if meta.get("state") != "ready":
        return None
    store = FeatureStore(group, path)
    diffs = identity_diff(store.manifest.identity, identity)
    if diffs:
        raise StoreError(
            f"store {path} was extracted with different settings; refusing to mix features:\n  "
            + "\n  ".join(diffs)
            + "\nUse another --store path, or delete this store to start over."
        )
    return store


class ShardWriter:
    """Writes whole shards on background threads so the backbone never waits on I/O.

    ``max_pending`` bounds the shards held in memory; ``submit`` blocks beyond it.
    """

    def __init__(
        self, group: zarr.Group, layout: S.Layout, threads: int = 2, max_pending: int = 2
    ) -> None:
        self.group = group
        self.layout = layout
        self.names = per_shard_arrays(layout)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="losa-writer")
        self.pending: list[Future] = []
        self.max_pending = max_pending
        self.bytes_written = 0

    def submit(
        self, shard: int, features: dict[int, np.ndarray], status: np.ndarray, errors: np.ndarray
    ) -> None:
        self._reap(block=len(self.pending) >= self.max_pending)
        self.pending.append(self.pool.submit(self.write, shard, features, status, errors))

    def write(
        self, shard: int, features: dict[int, np.ndarray], status: np.ndarray, errors: np.ndarray
    ) -> None:
        """Write one shard synchronously; idempotent (same inputs -> same bytes)."""
        start, stop = self.layout.shard_range(shard)
        values = [features[layer] for layer in self.layout.layers] + [status, errors]
        for name, value in zip(self.names, values, strict=True):
            self.group[name][start:stop] = value
        self.group[S.CHECKSUMS][shard] = np.array([checksum(v) for v in values], dtype=np.uint64)
        self.group[S.DONE][shard] = 1
        self.bytes_written += sum(v.nbytes for v in values[: len(self.layout.layers)])

    def _reap(self, block: bool) -> None:
        while self.pending and (block or self.pending[0].done()):
            self.pending.pop(0).result()  # re-raises a write error (e.g. disk full)
            block = False

    def close(self) -> None:
        """Wait for every submitted shard; raise the first write error."""
        try:
            while self.pending:
                self.pending.pop(0).result()
        finally:
            self.pool.shutdown(wait=True)


def verify_shards(store: FeatureStore, progress: bool = False) -> list[dict[str, Any]]:
    """Re-read every done shard and compare with the checksums recorded at write time."""
    from tqdm.auto import tqdm

    names = per_shard_arrays(store.layout)
    sums = store.group[S.CHECKSUMS][:]
    bad = []
    done = np.flatnonzero(store.done_shards())
    for shard in tqdm(done, desc="verify", unit="shard", disable=not progress):
        start, stop = store.layout.shard_range(int(shard))
        for col, name in enumerate(names):
            try:
                ok = checksum(store.group[name][start:stop]) == int(sums[shard, col])
                reason = "checksum mismatch"
            except Exception as e:  # truncated or undecodable shard file
                ok, reason = False, f"unreadable: {type(e).__name__}: {e}"
            if not ok:
                bad.append(
                    {"shard": int(shard), "array": name, "rows": [start, stop], "reason": reason}
                )
    return bad


def verify_store(
    path: str, repair: bool = False, storage_options: dict | None = None, progress: bool = False
) -> dict[str, Any]:
    """Check every done shard against its checksums; with ``repair``, clear the markers of
    the damaged ones (under the store lock) so the next extract rewrites exactly those."""
    from losa_cache.store.store import open_store

    store = open_store(path, storage_options)
    done = store.done_shards()
    bad = verify_shards(store, progress=progress)
    shards = sorted({b["shard"] for b in bad})
    if repair and shards:
        with store_lock(path, storage_options):
            mark_for_repair(path, shards, storage_options)
    return {
        "store": path,
        "shards_total": len(done),
        "shards_checked": int(done.sum()),
        "bad": bad,
        "bad_shards": shards,
        "repaired": bool(repair and shards),
    }


def mark_for_repair(path: str, shards: list[int], storage_options: dict | None = None) -> None:
    """Clear the done markers of damaged shards, then delete their objects, so the next
    extract rewrites them from scratch (zarr reads an existing shard before writing it,
    and a damaged one would fail that read)."""
    from zarr.core.sync import sync

    group = open_group(path, mode="r+", storage_options=storage_options)
    layout = S.Layout.from_dict(group.attrs[S.ROOT_ATTR]["layout"])
    for shard in shards:
        group[S.DONE][shard] = 0
    for name in per_shard_arrays(layout):
        arr = group[name]
        for shard in shards:
            sync((arr.store_path / shard_key(arr, layout.shard_range(shard)[0])).delete())


def shard_key(arr: zarr.Array, row: int) -> str:
    """Storage key of the object holding ``row`` of a per-shard array (a shard or chunk)."""
    rows = arr.shards[0] if arr.shards is not None else arr.chunks[0]
    return arr.metadata.encode_chunk_key((row // rows,) + (0,) * (arr.ndim - 1))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
