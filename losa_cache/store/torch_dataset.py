"""A store's rows as a map-style ``torch.utils.data.Dataset``, for training your own model.

    ds = open_store("stores/photos.zarr").torch_dataset([11, "sum:4"], split="train")
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
    for feats, labels in loader:   # feats: {11: (B, T, D), "sum:4": (B, T, D)}
        ...

Keys name what to read as training does (losa_cache/train/keys.py): a block index
(0-based, negative from the end), ``"embed"``, ``"sum:k"``, ``"attn:i"``, ``"mlp:i"``; one
key (not in a list) yields a tensor instead of a dict. Rows are those of ``split`` whose
image was decoded; labels come from ``task`` (-1: the row has none in that task).

The dataset pickles without its open store: each DataLoader worker opens the store on
its first item, so workers started by fork, forkserver or spawn all work. Every read goes
through :class:`~losa_cache.store.store.FeatureArray` (the direct shard-file reader where
the chunks allow it), whose crc32c checks refuse damaged bytes; values are those of
``store.features(b)[row]`` in the storage dtype (bf16 as ``torch.bfloat16``, int8
dequantized to float32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from losa_cache.store import schema as S
from losa_cache.store.errors import StoreError

if TYPE_CHECKING:
    from losa_cache.store.store import FeatureArray, QuantizedArray

__all__ = ["StoreDataset", "key_array"]

Key = int | str


def key_array(key: Key) -> tuple[str, int | None]:
    """(tap, block) of ``store.tap_features`` for a feed key: ``3`` -> ("blocks", 3),
    ``"attn:3"`` -> ("attn", 3), ``"sum:8"`` -> ("sum:8", None)."""
    if isinstance(key, (int, np.integer)):
        return "blocks", int(key)
    kind, _, arg = key.partition(":")
    if kind in S.PER_BLOCK_TAPS:
        if not arg.lstrip("-").isdigit():
            raise StoreError(f"key {key!r}: write {kind}:<0-based block>, e.g. {kind}:3")
        return kind, int(arg)
    return key, None


class StoreDataset(Dataset):
    """``(features, label)`` of one split's rows; see the module docstring."""

    def __init__(self, store: Any, keys: Key | Sequence[Key], split: str = "train",
                 task: str | None = None, storage_options: dict | None = None,
                 opener: Callable[[str, dict | None], Any] | None = None) -> None:  # fmt: skip
        """``store``: an open FeatureStore; ``opener(path, storage_options)`` opens it again
        in a worker process (``open_store``: FeatureStore.torch_dataset passes it, so this
        module needs nothing of store.py)."""
        self.path, self.storage_options, self.opener = store.path, storage_options, opener
        self.single = isinstance(keys, (int, np.integer, str))
        self.keys: tuple[Key, ...] = (keys,) if self.single else tuple(keys)
        if not self.keys:
            raise StoreError("torch_dataset needs at least one key, e.g. a block index or 'sum:4'")
        store.require_complete("or read it with open_store(..., allow_incomplete=True)")
        self._arrays: list[FeatureArray | QuantizedArray] | None = self._open(store)
        self.rows = store.split_rows(split)  # valid rows only; StoreError names the splits
        self.labels = store.labels(task)[self.rows].astype(np.int64)
        self.split, self.task = split, task or store.default_task

    def _open(self, store: Any) -> list[FeatureArray | QuantizedArray]:
        return [store.tap_features(*key_array(k)) for k in self.keys]  # StoreError if absent

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | dict[Key, torch.Tensor], int]:
        if self._arrays is None:  # first item in a worker process: open the store here
            self._arrays = self._open(self.opener(self.path, self.storage_options))
        row = int(self.rows[i])
        feats = [a.read_torch(row) for a in self._arrays]  # (T, D) each, checked
        label = int(self.labels[i])
        return (feats[0] if self.single else dict(zip(self.keys, feats, strict=True))), label

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the open arrays (zarr handles, file descriptors)."""
        return {**self.__dict__, "_arrays": None}

    def __repr__(self) -> str:
        return (f"StoreDataset({self.path!r}, keys={list(self.keys)}, split={self.split!r}, "
                f"task={self.task!r}, rows={len(self)})")  # fmt: skip
