"""Adding a split (a named set of rows) to a finished store: e.g. a held-out part of
train for model selection, so the split a recipe reports is measured once.

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

__all__ = ["add_split", "holdout_rows"]


def holdout_rows(
    rows: np.ndarray, size: int | float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): ``size`` rows (a fraction if < 1) drawn from ``rows`` by ``seed``,
    both sorted; the same on every machine (numpy's PCG64)."""
    rows = np.asarray(rows, dtype=np.int64)
    n = round(size * len(rows)) if size < 1 else int(size)
    if not 1 <= n < len(rows):
        raise ValueError(
            f"a held-out part of {size} leaves {len(rows) - n} of {len(rows)} "
            "rows to train on; choose a size between 1 row and all but one"
        )
    pick = np.random.default_rng([seed, len(rows)]).permutation(len(rows))[:n]
    held = np.zeros(len(rows), dtype=bool)
    held[pick] = True
    return rows[~held], rows[held]


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
