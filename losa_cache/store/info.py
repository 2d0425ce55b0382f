"""What `losa-cache info` reports about a store (plain dicts, JSON-ready)."""

from __future__ import annotations

from typing import Any

import numpy as np

from losa_cache.store.store import open_store


def store_info(path: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Everything a user wants to know about a store before training from it."""
    store = open_store(path, storage_options)
    m = store.manifest
    done = store.done_shards()
    size = store.nbytes()
    # Only written shards count towards the ratio: unwritten chunks are not on disk.
    written = size["logical"] * float(done.mean()) if len(done) else 0
    ratio = written / size["stored"] if size["stored"] > 0 and written else None
    return {
        "path": path,
        "schema_version": m.schema_version,
        "complete": bool(done.all()),
        "shards_done": int(done.sum()),
        "shards_total": len(done),
        "num_images": store.num_images,
        "splits": {k: len(v) for k, v in store.splits.items()},
        "layers": store.layers,
        "depth": store.depth,
        "token_layout": store.token_layout,
        "tasks": store.tasks,
        "default_task": store.default_task,
        "fingerprint": store.fingerprint,
        "dtype": store.dtype,
        "codec": m.codec,
        "chunk_rows": store.layout.chunk_rows,
        "shard_rows": store.layout.shard_rows,
        "bytes_logical": size["logical"],
        "bytes_stored": size["stored"],
        "compression_ratio": ratio,
        "skipped": store.skipped(),
        "extract_config": m.extract_config,
        "versions": m.versions,
        "created": m.created,
    }


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
