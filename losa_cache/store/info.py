"""What `losa-cache info` reports about a store (plain dicts, JSON-ready)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from losa_cache.fields import check_fields, option
from losa_cache.store import schema as S
from losa_cache.store.store import FeatureStore, has_crc32c, open_store


def store_info(path: str, storage_options: dict | None = None,
               sources: bool = False) -> dict[str, Any]:  # fmt: skip
    """Everything a user wants to know about a store before training from it; with
    ``sources`` also every row's image source, in row order (what ``tasks add`` matches)."""
    store = open_store(path, storage_options)
    store.check_arrays()  # damaged metadata or a foreign array: one line, never "complete"
    m = store.manifest
    done = store.done_shards()
    size = feature_bytes(store, done)
    return {
        "path": path,
        "schema_version": m.schema_version,
        "complete": bool(done.all()),
        "shards_done": int(done.sum()),
        "shards_total": len(done),
        "num_images": store.num_images,
        "splits": {k: len(v) for k, v in store.splits.items()},
        "taps": store.taps,
        "layers": store.layers,
        #: blocks of the per-block taps (blocks, attn, mlp)
        "tap_layers": list(store.layout.layers) if set(store.taps) & set(S.PER_BLOCK_TAPS) else [],
        "arrays": len(store.layout.tap_arrays()),
        "extensions": extension_progress(store),
        "depth": store.depth,
        "token_layout": store.token_layout,
        "tasks": store.tasks,
        "default_task": store.default_task,
        "fingerprint": store.fingerprint,
        "dtype": store.dtype,
        "codec": m.codec,
        "chunk_rows": store.layout.chunk_rows,
        "shard_rows": store.layout.shard_rows,
        **size,
        "verified_reads": store.verified_reads,
        "integrity": (
            "every chunk carries a crc32c that every read checks"
            if store.verified_reads
            else store.unverified_note
        ),
        "skipped": store.skipped(),
        "extract_config": m.extract_config,
        "versions": m.versions,
        "created": m.created,
        **({"sources": [str(x) for x in store.sources]} if sources else {}),
    }


def extension_progress(store: FeatureStore) -> list[dict[str, Any]]:
    """Taps added by ``extract --extend`` and how many of their shards are written."""
    out = []
    for i, ext in enumerate(store.manifest.extensions):
        done = store.done_shards(S.extension_progress(i)[0])
        out.append({"taps": ext["taps"], "shards_done": int(done.sum()), "shards_total": len(done)})
    return out


def feature_bytes(store: FeatureStore, done: np.ndarray) -> dict[str, Any]:
    """Logical bytes of the finished rows' features, bytes on disk, and why they differ:
    edge chunks are stored whole (padding), every chunk has a 4-byte crc32c and every
    shard an index, every array a zarr.json; what remains is the codec's doing."""
    lay = store.layout
    logical = padding = overhead = per_image = 0
    per_shard = lay.shard_rows // lay.chunk_rows
    arrays = [store.group[name] for name in store.feature_arrays()]
    for arr in arrays:
        marks = store.done_shards(store._group_of(arr.path).done)
        ranges = [lay.shard_range(s) for s in np.flatnonzero(marks).tolist()]
        rows = sum(hi - lo for lo, hi in ranges)
        chunks = sum(-(-(hi - lo) // lay.chunk_rows) for lo, hi in ranges)
        row_bytes = arr.nbytes // max(1, arr.shape[0])
        per_image += row_bytes
        logical += rows * row_bytes
        padding += (chunks * lay.chunk_rows - rows) * row_bytes
        crc = 4 if has_crc32c(arr) else 0
        overhead += chunks * crc + len(ranges) * (16 * per_shard + 4)
    stored = store.nbytes()["stored"]
    meta = sum(_metadata_bytes(a) for a in arrays)
    payload = stored - overhead - meta  # what the codec made of logical + padding
    ratio = (
        (logical + padding) / payload
        if store.manifest.codec != "none" and payload > 0 and stored >= 0
        else None
    )
    note = (
        f"on disk = features + {padding:,} B padding (edge chunks are stored whole) + "
        f"{overhead:,} B shard indexes and chunk checksums + {meta:,} B metadata"
    )
    if ratio is not None:
        note += f"; codec {store.manifest.codec} stores the features at {ratio:.3f}x"
    if not done.all():
        note += "; unfinished shards count in neither (files they left are on disk)"
    return {
        #: what a server sends a device per image (every array of the store, int8 scales in)
        "transfer_bytes_per_image": per_image,
        "bytes_logical": logical,
        "bytes_stored": stored,
        "bytes_padding": padding,
        "bytes_index_and_checksums": overhead,
        "bytes_metadata": meta,
        "compression_ratio": ratio,
        "size_note": note if stored >= 0 else "this store cannot list its sizes",
    }


def _metadata_bytes(arr: zarr.Array) -> int:
    from zarr.core.sync import sync

    try:
        return int(sync(arr.store_path.store.getsize(f"{arr.path}/zarr.json")))
    except Exception:
        return 0


def task_summaries(path: str) -> list[dict[str, Any]]:
    store = open_store(path)
    out = []
    for name in store.tasks:
        labels = store.labels(name)
        out.append(
            {
                "name": name,
                "classes": store.classes(name),
                "labelled": int(np.count_nonzero(labels >= 0)),
            }
        )
    return out


@dataclass
class InfoConfig:
    """``losa-cache info``: a store's summary (with every row's source, on request)."""

    store: str = option(help="Store path or URL.", argument=True)
    sources: bool = option(
        False, "Print every row's image source, one per line in row order (the sources "
        "`tasks add` label files name); with --json, add them as 'sources'.")  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TaskListConfig:
    """``losa-cache tasks list``: the store whose tasks to list."""

    store: str = option(help="Store path or URL.", argument=True)
