"""The view rows of a store (``extract --views``): the ``index/views`` table that maps each
clean row to the rows holding its augmented views (schema.py documents the layout;
losa_cache/augment.py makes the views and draws them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from losa_cache.store import schema as S
from losa_cache.store.store import StoreError

__all__ = ["read_view_table", "subset_rows", "subset_table", "write_view_table"]


def write_view_table(group: Any, table: np.ndarray) -> None:
    """``index/views`` of a store being written with views (idempotent: a resume of a
    creation killed before it wrote the table writes it; a differing one is refused)."""
    if S.VIEWS in group:
        if not np.array_equal(group[S.VIEWS][:], table):
            raise StoreError(f"{S.VIEWS} of this store differs from the views being written")
        return
    arr = group.create_array(
        S.VIEWS,
        shape=table.shape,
        dtype="int64",
        chunks=table.shape,
        fill_value=-1,
        dimension_names=("image", "view"),
        compressors=S.checked("none"),
    )
    arr[:] = table
    arr.attrs["meaning"] = (
        "store row of view v (column) of clean row r (row); column 0 "
        "is the clean row itself, -1 = no such view"
    )


def subset_rows(store: Any, kept: np.ndarray) -> np.ndarray:
    """``kept`` (sorted clean rows) and the view rows of each: a subset keeps the views of
    the rows it keeps (they follow the clean ones, as in any store with views)."""
    if S.VIEWS not in store.group:
        return kept
    views = store.group[S.VIEWS][:][kept, 1:]
    return np.unique(np.concatenate([kept, views[views >= 0]]))


def subset_table(store: Any, kept: np.ndarray) -> np.ndarray | None:
    """The subset's ``index/views`` for the source rows ``kept`` (subset_rows), renumbered."""
    if S.VIEWS not in store.group:
        return None
    table = store.group[S.VIEWS][:]
    clean = kept[kept < len(table)]
    new = np.full(int(kept.max()) + 1, -1, dtype=np.int64)
    new[kept] = np.arange(len(kept))
    out = table[clean]
    return np.where(out >= 0, new[np.maximum(out, 0)], -1)


def read_view_table(store: Any) -> np.ndarray | None:
    """A store's ``index/views`` with views of rows not written OK pointing at the clean
    row; None for a store without views."""
    if S.VIEWS not in store.group:
        return None
    table = np.asarray(store.group[S.VIEWS][:], dtype=np.int64)
    bad = (table < 0) | ~store.valid[np.maximum(table, 0)]
    return np.where(bad, table[:, :1], table)
