"""Adding a split (a named set of rows) to a finished store: e.g. a held-out part of
train for model selection (rows carved as ``extract --split`` carves them:
losa_cache.data.splits), so the split a recipe reports is measured once.

A split is the array ``splits/<name>`` plus its name in the manifest. Adding one writes
the array, then switches the manifest in one write (as ``tasks add`` does), under the
store's writer lock. Adding the same rows again is a no-op (a rerun of a recipe), other
rows under a taken name are refused: nothing already written is replaced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from losa_cache.outdir import is_safe_segment
from losa_cache.store import schema as S
from losa_cache.store.lease import LABELLING, store_lock
from losa_cache.store.store import FeatureStore, StoreError, open_group

__all__ = ["add_split"]


def add_split(
    path: str | Path, name: str, rows: np.ndarray, storage_options: dict | None = None
) -> bool:
    """Add split ``name`` holding ``rows``; False if it exists with these rows already."""
    if not is_safe_segment(name):
        raise ValueError(
            f"split name {name!r} is not one safe path segment (letters, digits, _ . -)"
        )
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    with store_lock(str(path), storage_options, purpose=LABELLING):
        group = open_group(path, mode="r+", storage_options=storage_options)
        store = FeatureStore(group, str(path))
        if name in store.manifest.splits:
            if np.array_equal(np.sort(store.splits[name]), rows):
                return False
            raise StoreError(
                f"store {path} has a split {name!r} with other rows; choose another name"
            )
        if len(rows) and (rows[0] < 0 or rows[-1] >= store.num_images):
            raise StoreError(f"split {name!r}: rows must lie in [0, {store.num_images})")
        arr = group.create_array(
            S.split_name(name),
            shape=(len(rows),),
            dtype="int64",
            chunks=(max(1, len(rows)),),
            fill_value=-1,
            dimension_names=(f"{name}_row",),
            compressors=S.checked("none"),
            attributes=S.stamp(store.manifest.store_id),  # reads check whose it is
            overwrite=True,
        )
        arr[:] = rows
        manifest = store.manifest
        manifest.splits.append(name)
        group.attrs[S.ROOT_ATTR] = manifest.to_dict()  # the switch: one atomic write
    return True
