"""``extract --extend``: add taps to a finished store without touching what it holds.

The new taps' arrays are created with their own done markers and checksums (progress
group ``progress/extend_<i>``), then the manifest is switched to list them (identity and
layout taps become the union); extraction then writes exactly the shards whose markers
are missing, so a killed extension resumes like any extraction. Everything but the taps
must match the store (backbone, weights, layers, dtype, rows, preprocessing).
"""

from __future__ import annotations

from typing import Any

from losa_cache.store import schema as S
from losa_cache.store.store import FeatureStore, StoreError, open_group
from losa_cache.store.target import inspect_target
from losa_cache.store.writer import (
    create_feature_arrays,
    create_progress,
    identity_diff,
    pending_shards,
    progress_groups,
    stored_identity,
)


def extend_store(
    path: str,
    identity: dict[str, Any],
    storage_options: dict | None = None,
    assumed: dict[str, Any] | None = None,
) -> FeatureStore:
    """The store at ``path`` with every tap of ``identity`` present (new ones created,
    unwritten); refused unless it is a finished store matching ``identity`` but for taps."""
    if inspect_target(path, storage_options) != "store":
        raise StoreError(f"--extend needs an existing store at {path}; drop --extend to create one")
    group = open_group(path, mode="r+", storage_options=storage_options)
    store = FeatureStore(group, path)
    stored = stored_identity(store.manifest, assumed)
    diffs = identity_diff(
        {k: v for k, v in stored.items() if k != "taps"},
        {k: v for k, v in identity.items() if k != "taps"},
    )
    if diffs:
        raise StoreError(
            f"--extend only adds taps, but store {path} differs in more:\n  "
            + "\n  ".join(diffs)
            + "\nUse the store's other settings (losa-cache info), or extract a new store."
        )
    store.check_arrays()  # metadata edited or an array copied in: repair first
    missing = tuple(t for t in identity["taps"] if t not in store.layout.taps)
    if not missing:
        return store  # nothing new: resume whatever is unfinished
    unfinished = [
        g.done
        for g in progress_groups(store.layout, store.manifest)
        if pending_shards(group, g.done)
    ]
    if unfinished:
        raise StoreError(
            f"store {path} is not finished ({', '.join(unfinished)} has shards to write): "
            "rerun the command that wrote it to finish, then --extend"
        )
    add_taps(group, store, missing)
    return FeatureStore(open_group(path, mode="r+", storage_options=storage_options), path)


def add_taps(group: Any, store: FeatureStore, taps: tuple[str, ...]) -> None:
    """Create the arrays of ``taps`` and their progress group, then switch the manifest
    (last: until then the store reads as before, and a rerun recreates the arrays)."""
    m, lay = store.manifest, store.layout
    every = sorted([*lay.taps, *taps], key=S.tap_order)
    layout = S.Layout.from_dict({**lay.to_dict(), "taps": every})
    create_feature_arrays(group, layout, m.codec, taps, overwrite=True, store_id=m.store_id)
    done, sums = S.extension_progress(len(m.extensions))
    arrays = layout.stored_arrays(taps)
    create_progress(group, layout.num_shards, done, sums, arrays, True, m.store_id)
    m.layout = layout.to_dict()
    m.identity = {**m.identity, "taps": list(layout.taps)}
    m.extensions = [*m.extensions, {"taps": list(taps)}]
    group.attrs.put({S.ROOT_ATTR: m.to_dict()})
