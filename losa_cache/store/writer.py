"""Creating stores and writing whole shards: idempotent, checksummed, resumable.

A shard is written as: its done marker cleared and its old objects deleted, every
feature array's rows, then status/error, then its checksums, and only then its done
marker. A killed run or a full disk therefore never leaves a shard that reads as done,
and rerunning rewrites exactly the shards without a marker, whatever is left of them.

A store is only ever created where nothing of the user's can be lost (store/target.py).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from losa_cache.fields import option
from losa_cache.store import schema as S
from losa_cache.store.lease import store_lock
from losa_cache.store.schema import (  # the progress groups are the schema's
    Progress,
    group_of,
    per_shard_arrays,
    progress_groups,
)
from losa_cache.store.store import (
    FeatureStore,
    StoreError,
    every_chunk,
    open_group,
    write_task,
)
from losa_cache.store.target import PARTIAL_ATTR, create_root, inspect_target, root_attrs


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
    by: str = "extract",
) -> zarr.Group:
    """Create every array and the manifest. Only the coordinating process calls this.

    ``path`` must be missing, an empty folder, or the remains of an interrupted creation
    or import (cleared first); anything else is refused (:func:`create_root`).
    """
    group = create_root(path, by, storage_options)
    manifest.store_id = uuid.uuid4().hex  # every store its own, subsets and all
    create_arrays(group, layout, manifest.codec, sources, splits, manifest.store_id)
    for name, (labels, classes) in tasks.items():
        write_task(group, name, labels, classes, "dataset", store_id=manifest.store_id)
    manifest.state = "ready"
    group.attrs.put({S.ROOT_ATTR: manifest.to_dict()})  # last, and drops PARTIAL_ATTR
    return group


def create_arrays(
    group: zarr.Group,
    layout: S.Layout,
    codec: str,
    sources: list[str],
    splits: dict[str, list[int]],
    store_id: str | None = None,
) -> None:
    """Every array but the tasks, with the sources and splits written (schema.py says
    what each holds): numeric dtypes, dimension names and a crc32c on every chunk; each
    stamped with ``store_id``."""
    n = layout.num_images
    create_feature_arrays(group, layout, codec, store_id=store_id)
    stamp = S.stamp(store_id)
    small = {"compressors": S.checked("none"), "attributes": stamp}
    create_index_arrays(group, layout, store_id)
    width = S.text_width(sources)
    src = group.create_array(
        S.SOURCE,
        shape=(n, width),
        dtype="uint8",
        chunks=(min(max(1, n), 1 << 16), width),
        fill_value=0,
        dimension_names=("image", "source_byte"),
        compressors=S.checked("zstd-plain"),  # NUL padding compresses away
        attributes={**stamp, "encoding": S.TEXT_ENCODING},
    )
    every_chunk(src)[:] = S.encode_text(sources, width)
    for name, idx in splits.items():
        arr = group.create_array(
            S.split_name(name),
            shape=(len(idx),),
            dtype="int64",
            chunks=(max(1, len(idx)),),
            fill_value=-1,
            dimension_names=(f"{name}_row",),
            **small,
        )
        every_chunk(arr)[:] = np.asarray(idx, dtype=np.int64)
    create_progress(
        group, layout.num_shards, S.DONE, S.CHECKSUMS, per_shard_arrays(layout), False, store_id
    )


def create_index_arrays(
    group: zarr.Group, layout: S.Layout, store_id: str | None, overwrite: bool = False
) -> None:
    """index/status and index/error (per-shard arrays of the base progress group)."""
    stamp = S.stamp(store_id)
    status, error = layout.array_spec(S.STATUS), layout.array_spec(S.ERROR)
    group.create_array(
        S.STATUS,
        shape=status.shape,
        dtype=status.dtype,
        chunks=status.chunks,
        fill_value=S.PENDING,
        dimension_names=("image",),
        compressors=S.checked("none"),
        attributes=stamp,
        overwrite=overwrite,
    )
    group.create_array(
        S.ERROR,
        shape=error.shape,
        dtype=error.dtype,
        chunks=error.chunks,
        fill_value=0,
        dimension_names=("image", "error_byte"),
        compressors=S.checked("zstd-plain"),  # NUL padding compresses away
        attributes={**stamp, "encoding": S.TEXT_ENCODING},
        overwrite=overwrite,
    )


def create_feature_arrays(
    group: zarr.Group,
    layout: S.Layout,
    codec: str,
    taps: tuple[str, ...] | None = None,
    overwrite: bool = False,
    store_id: str | None = None,
    only: set[str] | None = None,
) -> None:
    """The feature arrays of ``taps`` (default all; ``only``: just these arrays): (N, T,
    D) each, int8 with its (N, T) fp16 scales; sharded by ``shard_rows``, crc32c on
    every chunk, stamped with ``store_id``. Shapes and chunks: ``Layout.array_spec``."""
    stamp = S.stamp(store_id)
    for name, tap, index in layout.tap_arrays(taps):
        spec = layout.array_spec(name)
        if only is None or name in only:
            group.create_array(
                name,
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=spec.chunks,
                shards=spec.shards,
                compressors=S.checked(codec),
                fill_value=S.feature_fill(layout.dtype),
                dimension_names=S.FEATURE_DIMS,
                overwrite=overwrite,
                attributes={**S.feature_attrs(tap, index, layout.dtype), **stamp},
            )
        scale = S.scale_name(name)
        if layout.dtype == "int8" and (only is None or scale in only):
            spec = layout.array_spec(scale)
            group.create_array(
                scale,
                shape=spec.shape,
                dtype=spec.dtype,
                chunks=spec.chunks,
                shards=spec.shards,
                compressors=S.checked("none"),
                fill_value=float("nan"),
                dimension_names=S.FEATURE_DIMS[:2],
                overwrite=overwrite,
                attributes={"scales_of": name, "dtype": "float16", **stamp},
            )


def create_progress(
    group: zarr.Group,
    shards: int,
    done: str,
    checksums: str,
    arrays: list[str],
    overwrite: bool = False,
    store_id: str | None = None,
) -> None:
    """Done markers (one per shard, written last) and checksum rows of some arrays."""
    stamp = S.stamp(store_id)
    small = {"compressors": S.checked("none"), "overwrite": overwrite, "attributes": stamp}
    group.create_array(
        done,
        shape=(shards,),
        dtype="uint8",
        chunks=(1,),
        fill_value=0,
        dimension_names=("shard",),
        **small,
    )
    sums = group.create_array(
        checksums,
        shape=(shards, len(arrays)),
        dtype="uint64",
        chunks=(1, len(arrays)),
        fill_value=0,
        dimension_names=("shard", "array"),
        **{**small, "attributes": {**stamp, "arrays": list(arrays)}},
    )
    del sums


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
    path: str,
    identity: dict[str, Any],
    storage_options: dict | None = None,
    assumed: dict[str, Any] | None = None,
) -> FeatureStore | None:
    """The existing store if it matches ``identity``; None where a new one may be created
    (nothing there, an empty folder, or the remains of our interrupted creation).
    ``assumed``: the settings a store that does not record them was made with."""
    if inspect_target(path, storage_options) != "store":
        return None
    store = FeatureStore(open_group(path, mode="r+", storage_options=storage_options), path)
    diffs = identity_diff(stored_identity(store.manifest, assumed), identity)
    if not diffs:
        store.check_arrays()  # metadata edited or an array copied in: repair first
    if diffs:
        more = (
            "\nTo add taps to a finished store: the same command with --extend."
            if [d for d in diffs if d.startswith("taps:")] == diffs
            else ""
        )
        raise StoreError(
            f"store {path} was extracted with different settings; refusing to mix features:\n  "
            + "\n  ".join(diffs)
            + more
            + "\nUse another --store path, or delete this store to start over."
        )
    return store


def stored_identity(manifest: S.Manifest, assumed: dict[str, Any] | None = None) -> dict[str, Any]:
    """A store's identity; stores from before taps hold block outputs only, and settings
    a store does not record are ``assumed`` (those it was made with: their defaults)."""
    identity = {"taps": ["blocks"], **manifest.identity}
    if assumed is not None:
        identity["settings"] = {**assumed, **identity.get("settings", {})}
    return identity


class NonFiniteError(StoreError):
    """Features hold NaN or inf: never written (they would read like unwritten rows)."""


def refuse_nonfinite(layout: S.Layout, shard: int, name: str, values: np.ndarray) -> None:
    """Raise :class:`NonFiniteError` naming the array, rows and count if ``values`` (one
    shard of ``name``, as stored) hold NaN or inf."""
    bad = S.nonfinite_rows(values, layout.values_dtype(name))
    if bad.any():
        rows = (np.flatnonzero(bad) + layout.shard_range(shard)[0]).tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise NonFiniteError(
            f"{len(rows)} row(s) of {name} hold NaN or inf (store rows {shown}), shard "
            f"{shard} not written: features are never stored non-finite; compute in fp32 "
            "(--precision fp32) or store a wider --dtype, or check the backbone's weights"
        )


class ShardWriter:
    """Writes whole shards on background threads so the backbone never waits on I/O.

    ``max_pending`` bounds the shards held in memory; ``submit`` blocks beyond it.
    ``groups`` are the store's progress groups (default: read from its manifest).
    """

    def __init__(
        self,
        group: zarr.Group,
        layout: S.Layout,
        threads: int = 2,
        max_pending: int = 2,
        groups: list[Progress] | None = None,
    ) -> None:
        self.group = group
        self.layout = layout
        manifest = S.Manifest.from_dict(group.attrs[S.ROOT_ATTR])
        self.groups = groups or progress_groups(layout, manifest)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="losa-writer")
        self.pending: list[Future] = []
        self.max_pending = max_pending
        self.bytes_written = 0

    def submit(
        self,
        shard: int,
        features: dict[str, np.ndarray],
        status: np.ndarray,
        errors: np.ndarray,
        groups: list[Progress] | None = None,
    ) -> None:
        self._reap(block=len(self.pending) >= self.max_pending)
        self.pending.append(self.pool.submit(self.write, shard, features, status, errors, groups))

    def write(
        self,
        shard: int,
        features: dict[str, np.ndarray],
        status: np.ndarray,
        errors: np.ndarray,
        groups: list[Progress] | None = None,
    ) -> None:
        """Write one shard of ``groups`` (default all) synchronously; idempotent.

        Each group's shard is overwritten wholesale, never read: its done marker is
        cleared and its old objects deleted first (zarr reads an existing shard before
        overwriting it, so a truncated or damaged leftover of a killed run or repair would
        fail the rewrite). An extension's shard is only written beside rows the base
        group has finished with the same status (the images decoded as they did then).
        """
        start, stop = self.layout.shard_range(shard)
        for g in groups if groups is not None else self.groups:
            extra: list[np.ndarray] = []
            if g.base:
                extra = [status, S.text_for(self.group[S.ERROR], errors)]
            elif not np.array_equal(self.group[S.STATUS][start:stop], status):
                raise StoreError(
                    f"shard {shard}: images decode differently than when the store was "
                    "extracted (status changed); restore the data set as it was, or extract "
                    "a new store with every tap"
                )
            names = [a for a in g.arrays if a not in (S.STATUS, S.ERROR)]
            values = [features[a] for a in names] + extra
            for name in names:
                refuse_nonfinite(self.layout, shard, name, features[name])
            self.group[g.done][shard] = 0
            delete_shard(self.group, self.layout, shard, g.arrays)
            for name, value in zip(g.arrays, values, strict=True):
                every_chunk(self.group[name])[start:stop] = value
            every_chunk(self.group[g.checksums])[shard] = np.array(
                [checksum(v) for v in values], dtype=np.uint64
            )
            self.group[g.done][shard] = 1
            self.bytes_written += sum(v.nbytes for v in values[: len(names)])

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
    """Re-read every done shard of every progress group and compare with the checksums
    recorded at write time; an unreadable done marker or checksum row is damage of its
    shard too."""
    bad: list[dict[str, Any]] = []
    for g in progress_groups(store.layout, store.manifest):
        bad += _verify_group(store, g, progress)
    return sorted(bad, key=lambda b: b["shard"])


def _verify_group(store: FeatureStore, g: Progress, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    layout = store.layout
    broken = {}  # arrays whose metadata disagrees with the manifest: all their shards
    for name in (*g.arrays, g.done, g.checksums):
        problem = store.open_array(name)[1]
        if problem is not None:
            broken[name] = f"{METADATA}{problem}"
    if broken:
        shards = range(layout.num_shards)
        return [_bad(layout, s, name, why) for name, why in broken.items() for s in shards]
    names = list(store.group[g.checksums].attrs.get("arrays", g.arrays))
    sharded = set(layout.stored_arrays())  # one object per shard: it must be there
    done, bad_markers = readable_rows(store.group[g.done])
    sums, bad_sums = readable_rows(store.group[g.checksums])
    bad = [_bad(layout, s, g.done, why) for s, why in bad_markers.items()]
    for shard in tqdm(np.flatnonzero(done), desc="verify", unit="shard", disable=not progress):
        shard = int(shard)
        if shard in bad_sums:
            bad.append(_bad(layout, shard, g.checksums, bad_sums[shard]))
            continue
        start, stop = layout.shard_range(shard)
        for col, name in enumerate(names):
            if name in sharded and not _stored(store.group[name], start):
                bad.append(_bad(layout, shard, name, MISSING))  # reads say the same
                continue
            try:
                ok = checksum(store.group[name][start:stop]) == int(sums[shard, col])
                reason = "checksum mismatch"
            except Exception as e:  # truncated or undecodable shard file
                ok, reason = False, f"unreadable: {type(e).__name__}: {e}"
            if not ok:
                bad.append(_bad(layout, shard, name, reason))
    return bad


#: how verify's report starts the reason of an array whose metadata is damaged
METADATA = "metadata: "
MISSING = "its file is missing or empty but the shard is marked done"


def _stored(arr: zarr.Array, row: int) -> bool:
    """Whether the object holding ``row`` exists and is not empty (every chunk is
    stored, fill values too: a missing one is lost, not "all NaN")."""
    from zarr.core.sync import sync

    try:
        return sync(arr.store_path.store.getsize(f"{arr.path}/{shard_key(arr, row)}")) > 0
    except FileNotFoundError:
        return False


def _bad(layout: S.Layout, shard: int, array: str, reason: str) -> dict[str, Any]:
    rows = list(layout.shard_range(shard))
    return {"shard": shard, "array": array, "rows": rows, "reason": reason}


def readable_rows(arr: zarr.Array) -> tuple[np.ndarray, dict[int, str]]:
    """``arr[:]``, or where that fails row by row: (values, {unreadable row: why}); rows
    that cannot be read are left 0 (done markers: not done)."""
    try:
        return arr[:], {}
    except Exception:  # a damaged chunk: find which
        pass
    values, bad = np.zeros(arr.shape, dtype=arr.dtype), {}
    for row in range(arr.shape[0]):
        try:
            values[row] = arr[row]
        except Exception as e:
            bad[row] = f"unreadable: {type(e).__name__}: {e}"
    return values, bad


def done_shards(group: zarr.Group, shards: list[int] | None = None) -> np.ndarray:
    """Done markers as bools (of ``shards``, else all); an unreadable marker reads as not
    done, so extraction rewrites its shard (and the marker) instead of failing on it."""
    arr = group[S.DONE]
    if shards is None:
        return readable_rows(arr)[0].astype(bool)
    try:
        return arr.get_coordinate_selection(np.asarray(shards)).astype(bool)
    except Exception:  # a damaged marker among them: read one by one
        return np.array([_marker(arr, s) for s in shards], dtype=bool)


def _marker(arr: zarr.Array, shard: int) -> bool:
    try:
        return bool(arr[shard])
    except Exception:
        return False


def pending_shards(group: zarr.Group, done: str = S.DONE) -> list[int]:
    """Shards whose done marker reads as not done (unreadable markers are damage)."""
    marks, unreadable = readable_rows(group[done])
    return sorted(set(np.flatnonzero(~marks.astype(bool)).tolist()) - set(unreadable))


def partial_shards(store: FeatureStore) -> list[int]:
    """Shards without a done marker that still hold objects (an interrupted write or
    repair): not errors, since resuming rewrites them whole without reading them."""
    found: set[int] = set()
    for g in progress_groups(store.layout, store.manifest):
        pending = set(pending_shards(store.group, g.done))
        for name in g.arrays if pending else []:
            arr = store.group[name]
            rows = arr.shards[0] if arr.shards is not None else arr.chunks[0]
            prefix = f"{arr.store_path.path}/c/"
            for key in _list_keys(arr.store_path.store, prefix):
                first = key[len(prefix) :].split("/")[0]
                shard = int(first) * rows // store.layout.shard_rows if first.isdigit() else -1
                if shard in pending:
                    found.add(shard)
    return sorted(found)


def _list_keys(store: Any, prefix: str) -> list[str]:
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return sync(collect())


def verify_store(
    path: str, repair: bool = False, storage_options: dict | None = None, progress: bool = False
) -> dict[str, Any]:
    """Check every shard: done ones against their checksums, the others reported as not
    extracted (``partial`` where an interrupted write or repair left objects behind). With
    ``repair``, damaged shards are reset under the store lock (:func:`mark_for_repair`)
    so the next extract rewrites exactly those."""
    from losa_cache.store.store import open_store, storage_errors

    try:
        store = open_store(path, storage_options)
    except StoreError:
        if PARTIAL_ATTR not in root_attrs(path, storage_options):
            raise
        raise StoreError(
            f"{path} is a store whose creation was cut off (nothing extracted yet): rerun "
            "the extract or import command that made it"
        ) from None
    store.check_arrays(per_shard=False)  # written once: extraction cannot rewrite them
    bad = verify_shards(store, progress=progress)
    done, unreadable = readable_rows(store.group[S.DONE])
    shards = sorted({b["shard"] for b in bad})
    if repair and shards:
        retry = "rerun `losa-cache verify --repair`"
        rebuild = sorted({b["array"] for b in bad if b["reason"].startswith(METADATA)})
        with storage_errors(path, retry), store_lock(path, storage_options):
            mark_for_repair(path, shards, storage_options, [b["array"] for b in bad], rebuild)
        store = open_store(path, storage_options)
    return {
        "store": path,
        "shards_total": len(done),
        "shards_checked": int(done.astype(bool).sum()) + len(unreadable),
        "bad": bad,
        "bad_shards": shards,
        "repaired": bool(repair and shards),
        "pending_shards": pending_shards(store.group),
        "pending_extension_shards": {
            ",".join(g.taps): pending_shards(store.group, g.done)
            for g in progress_groups(store.layout, store.manifest)[1:]
        },
        "partial_shards": partial_shards(store),
    }


def mark_for_repair(
    path: str,
    shards: list[int],
    storage_options: dict | None = None,
    arrays: list[str] | None = None,
    rebuild: list[str] = (),
) -> None:
    """Reset damaged shards so the next extract rewrites them: first every done marker is
    cleared, then the shards' objects are deleted. Safe to interrupt anywhere and to rerun:
    a shard is either still marked done and damaged (verify names it again) or has no
    marker, which extract rewrites wholesale without reading what is left of it.
    ``arrays`` (the damaged ones, default all) choose which progress groups are reset;
    ``rebuild`` are arrays whose metadata is damaged: recreated empty, as at creation
    (their groups' markers first: a rebuilt done array marks no shard done)."""
    group = open_group(path, mode="r+", storage_options=storage_options)
    manifest = S.Manifest.from_dict(group.attrs[S.ROOT_ATTR], path)
    layout = S.Layout.from_dict(manifest.layout)
    groups = progress_groups(layout, manifest)
    if arrays is not None:
        groups = [g for g in groups if any(group_of(groups, a) == g for a in arrays)]
    for g in groups:
        if g.done in rebuild or g.checksums in rebuild:  # recreated: no shard marked done
            create_progress(group, layout.num_shards, g.done, g.checksums, list(g.arrays),
                            True, manifest.store_id)  # fmt: skip
            continue
        for shard in shards:
            group[g.done][shard] = 0
    rebuild_arrays(group, layout, manifest, rebuild)
    for g in groups:
        for shard in shards:
            delete_shard(group, layout, shard, g.arrays)


def rebuild_arrays(
    group: zarr.Group, layout: S.Layout, manifest: S.Manifest, names: list[str]
) -> None:
    """Recreate per-shard arrays (features, scales, status, error) empty, with the
    metadata creation gives them; their shards must already be marked not done."""
    features = set(names) & set(layout.stored_arrays())
    if features:
        create_feature_arrays(group, layout, manifest.codec, overwrite=True,
                              store_id=manifest.store_id, only=features)  # fmt: skip
    if {S.STATUS, S.ERROR} & set(names):
        create_index_arrays(group, layout, manifest.store_id, overwrite=True)


def delete_shard(
    group: zarr.Group, layout: S.Layout, shard: int, arrays: tuple[str, ...] | None = None
) -> None:
    """Delete the objects holding ``shard`` in ``arrays`` (default: the base group's)."""
    from zarr.core.sync import sync

    row = layout.shard_range(shard)[0]
    for name in arrays if arrays is not None else per_shard_arrays(layout):
        arr = group[name]
        sync((arr.store_path / shard_key(arr, row)).delete())


def shard_key(arr: zarr.Array, row: int) -> str:
    """Storage key of the object holding ``row`` of a per-shard array (a shard or chunk)."""
    rows = arr.shards[0] if arr.shards is not None else arr.chunks[0]
    return arr.metadata.encode_chunk_key((row // rows,) + (0,) * (arr.ndim - 1))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class VerifyConfig:
    """``losa-cache verify``: which store to re-read, and whether to mark damage for repair."""

    store: str = option(help="Store path or URL.", argument=True)
    repair: bool = option(False, "Clear the done markers of damaged shards (then rerun extract).")
