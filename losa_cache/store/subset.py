"""``losa-cache subset``: a smaller copy of a store for another machine (no backbone run).

Keeps some blocks (``--layers``), taps (``--taps``), splits' rows (``--rows``) and
optionally re-encodes to fp16 or int8 (``--dtype``); everything kept is copied bit-exact
when the dtype stays. The copy has the source's fingerprint, an identity for what it
holds, and ``Manifest.subset`` recording what was kept of which store. It is written a
shard at a time with done markers and checksums, like extraction, so a killed run is
resumed by rerunning the same command. Works between local paths and fsspec URLs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from losa_cache.fields import check_fields, option
from losa_cache.side.layers import parse_layers
from losa_cache.store import schema as S
from losa_cache.store.quant import quantize
from losa_cache.store.store import (
    FeatureStore,
    StoreError,
    numpy_view,
    open_group,
    open_store,
    storage_errors,
)
from losa_cache.store.taps import parse_taps, tap_names
from losa_cache.store.target import inspect_target
from losa_cache.store.views import subset_rows, subset_table, write_view_table
from losa_cache.store.writer import (
    ShardWriter,
    create_store,
    identity_diff,
    now,
    pending_shards,
    progress_groups,
    store_lock,
)

RETRY = "rerun the same `losa-cache subset` command to resume"


def subset_store(
    src: str,
    dst: str,
    layers: str | None = None,
    taps: str | None = None,
    dtype: str | None = None,
    rows: list[str] | None = None,
    storage_options: dict | None = None,
    dst_storage_options: dict | None = None,
) -> dict[str, Any]:
    """Write (or resume writing) the subset of ``src`` asked for into ``dst``."""
    with storage_errors(dst, RETRY):
        inspect_target(dst, dst_storage_options)  # refuse a bad path before its lock file
    source = open_store(src, storage_options)
    for g in progress_groups(source.layout, source.manifest):
        if pending_shards(source.group, g.done):
            raise StoreError(
                f"store {src} is not finished: rerun the extract command that wrote it, then subset"
            )
    layout, splits, kept = plan_subset(source, layers, taps, dtype, rows)
    record = {"source": src, "source_identity": source.manifest.identity,
              "layers": list(layout.layers), "taps": list(layout.taps),
              "dtype": layout.dtype, "rows": rows or "all"}  # fmt: skip
    with storage_errors(dst, RETRY), store_lock(dst, dst_storage_options):
        group = open_or_create(source, dst, layout, splits, kept, record, dst_storage_options)
        if (views := subset_table(source, kept)) is not None:  # store/views.py: views kept
            write_view_table(group, views)
        todo = pending_shards(group)
        writer = ShardWriter(group, layout)
        try:
            for shard in todo:
                start, stop = layout.shard_range(shard)
                writer.submit(shard, *shard_values(source, layout, kept[start:stop]))
        finally:
            writer.close()
    return {"source": src, "store": dst, "num_images": layout.num_images,
            "taps": list(layout.taps), "layers": list(layout.layers), "dtype": layout.dtype,
            "shards_written": len(todo), "shards_total": layout.num_shards,
            "bytes_written": writer.bytes_written}  # fmt: skip


def plan_subset(
    source: FeatureStore,
    layers: str | None,
    taps: str | None,
    dtype: str | None,
    rows: list[str] | None,
) -> tuple[S.Layout, dict[str, list[int]], np.ndarray]:
    """(layout of the copy, its splits renumbered, the source row of each copy row)."""
    lay = source.layout
    names = tuple(tap_names(parse_taps(taps, source.depth))) if taps else lay.taps
    extra = [t for t in names if t not in lay.taps]
    if extra:
        raise StoreError(f"the source holds taps {list(lay.taps)}, not {extra}; --taps from those")
    blocks = parse_layers(layers, source.depth) if layers else lay.layers
    if not set(blocks) <= set(lay.layers):
        raise StoreError(f"the source holds blocks {list(lay.layers)}; --layers from those")
    out_dtype = S.parse_dtype(dtype) if dtype else lay.dtype
    if out_dtype != lay.dtype and out_dtype not in ("float16", "int8"):
        raise StoreError(f"--dtype {dtype}: a subset keeps the dtype or converts to fp16 or int8")
    if lay.dtype == "int8" and out_dtype != "int8":
        raise StoreError("the source is int8: its subset stays int8 (the rest is lost)")
    all_splits = {k: np.asarray(v) for k, v in source.splits.items()}
    chosen = rows or list(all_splits)
    unknown = [r for r in chosen if r not in all_splits]
    if unknown:
        raise StoreError(f"unknown split(s) {unknown} for --rows; the store has {list(all_splits)}")
    kept = subset_rows(source, np.unique(np.concatenate([all_splits[r] for r in chosen])))
    new = {int(r): i for i, r in enumerate(kept)}
    splits = {r: [new[int(i)] for i in all_splits[r]] for r in chosen}
    chunk = min(lay.chunk_rows, len(kept))
    shard = chunk * max(1, min(lay.shard_rows // chunk, -(-len(kept) // chunk)))
    layout = S.Layout(len(kept), lay.tokens, lay.dim, tuple(blocks), out_dtype, chunk, shard,
                      tuple(sorted(names, key=S.tap_order)))  # fmt: skip
    return layout, splits, kept


def open_or_create(
    source: FeatureStore,
    dst: str,
    layout: S.Layout,
    splits: dict[str, list[int]],
    kept: np.ndarray,
    record: dict[str, Any],
    storage_options: dict | None,
) -> Any:
    """The copy's group: resumed if it is this very subset, else created (never into a
    folder that is not ours: store/target.py)."""
    if inspect_target(dst, storage_options) == "store":
        group = open_group(dst, mode="r+", storage_options=storage_options)
        have = S.Manifest.from_dict(group.attrs[S.ROOT_ATTR]).subset or {}
        diffs = identity_diff(have, record)
        if diffs:
            raise StoreError(
                f"{dst} holds another store or subset:\n  " + "\n  ".join(diffs)
                + "\nChoose another destination, or delete it to start over."
            )  # fmt: skip
        return group
    m = copy.deepcopy(source.manifest)
    m.layout = layout.to_dict()
    rows = {"count": len(kept), "subset_of": m.identity["rows"], "splits": sorted(splits)}
    m.identity = {**m.identity, "layers": list(layout.layers), "taps": list(layout.taps),
                  "dtype": layout.dtype, "rows": rows}  # fmt: skip
    m.subset, m.extensions, m.created, m.splits = record, [], now(), list(splits)
    m.schema_version, m.state, m.task_arrays = S.SCHEMA_VERSION, "created", {}
    sources = [str(s) for s in source.sources[kept]]
    tasks = {t: (source.labels(t)[kept], source.classes(t)) for t in source.tasks}
    return create_store(dst, layout, m, sources, splits, tasks, storage_options, by="subset")


def shard_values(
    source: FeatureStore, layout: S.Layout, rows: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(features by array path, status, errors) of the source rows of one copy shard."""
    features: dict[str, np.ndarray] = {}
    for name, tap, block in layout.tap_arrays():
        arr = source.tap_features(tap, block if S.tap_kind(tap) in S.PER_BLOCK_TAPS else None)
        if source.dtype == "int8":  # int8 -> int8: the codes and scales as stored
            features[name], features[S.scale_name(name)] = arr.raw(rows)
            continue
        stored = arr.read_torch(rows)  # storage dtype (bf16 viewed), bit-exact
        if layout.dtype == source.dtype:
            bits = numpy_view(stored)
            features[name] = bits.view(np.uint16) if source.dtype == "bfloat16" else bits
        elif layout.dtype == "int8":
            codes, scales = quantize(stored.float())
            features[name], features[S.scale_name(name)] = codes.numpy(), scales.numpy()
        else:
            features[name] = stored.to(torch.float16).numpy()
    status = source.group[S.STATUS].get_coordinate_selection(rows)
    errors = S.decode_text(source.group[S.ERROR].get_orthogonal_selection((rows, slice(None))))
    return features, status, np.asarray(errors, dtype=str)


@dataclass
class SubsetConfig:
    """``losa-cache subset``: which part of a store to copy (None: all the source has)."""

    src: str = option(help="Source store path or URL.", argument=True)
    dst: str = option(help="New store path or URL (created, or resumed).", argument=True)
    layers: str | None = option(None, "Blocks to keep (0-based; default all the source has).")
    taps: str | None = option(None, "Taps to keep, e.g. blocks,sum:4 (default all).")
    dtype: str | None = option(None, "fp16 | int8 (default: the source's dtype).")
    rows: list[str] | None = option(  # noqa: RUF009
        None, "Splits whose rows to keep, e.g. train,val (default all)."
    )

    def __post_init__(self) -> None:
        check_fields(self)
