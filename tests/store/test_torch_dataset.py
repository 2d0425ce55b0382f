"""`open_store(...).torch_dataset(...)`: a DataLoader with worker processes reads exactly what
`features()` reads."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from losa_cache.store import StoreError, open_store


def expected(store, key, rows: np.ndarray) -> torch.Tensor:
    """What `features()` / `tap_features()` read for ``rows`` (bf16 stores: float32)."""
    tap, block = ("blocks", key) if isinstance(key, int) else (key, None)
    return torch.from_numpy(np.ascontiguousarray(store.tap_features(tap, block)[rows]))


@pytest.fixture(scope="module")
def taps_store(tiny_extract: Callable[..., str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """fp16 store with blocks 1 and 3, embed and sum:2 (3 demo rows per split)."""
    path = tmp_path_factory.mktemp("ds") / "taps.zarr"
    return tiny_extract(path, layers="1,3", taps="blocks,embed,sum:2", dtype="float16")


@pytest.mark.parametrize("context", ["forkserver", "fork"])
def test_loader_with_two_workers_equals_features(taps_store: str, context: str) -> None:
    """forkserver pickles the dataset into each worker (as spawn does); fork copies it."""
    store = open_store(taps_store)
    keys = [3, "embed", "sum:2"]
    ds = store.torch_dataset(keys, split="train")
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == len(store.split_rows("train"))
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no open store
    assert clone._arrays is None
    ctx = torch.multiprocessing.get_context(context)
    if context == "forkserver":
        ctx.set_forkserver_preload(["torch", "losa_cache.store"])
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context=ctx))
    feats = {k: torch.cat([f[k] for f, _ in batches]) for k in keys}
    labels = torch.cat([y for _, y in batches])
    rows = store.split_rows("train")
    for k in keys:
        want = expected(store, k, rows)
        assert feats[k].dtype == want.dtype == torch.float16
        assert torch.equal(feats[k].view(torch.int16), want.view(torch.int16)), k  # bit for bit
    assert torch.equal(labels, torch.from_numpy(store.labels()[rows].astype(np.int64)))


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_one_key_yields_a_tensor_in_every_dtype(kind_store: Callable[[str, str], str],
                                                dtype: str) -> None:  # fmt: skip
    store = open_store(kind_store(dtype, "none"))
    ds = store.torch_dataset(-1, split="test")  # negative: from the end, as features()
    rows = store.split_rows("test")
    got = torch.stack([ds[i][0] for i in range(len(ds))])
    want = expected(store, 3, rows)  # the store's blocks are 1 and 3 of 4
    assert torch.equal(got.float(), want)  # bf16 upcast exactly; int8 dequantized
    assert [ds[i][1] for i in range(len(ds))] == store.labels()[rows].tolist()


def test_refuses_what_the_store_lacks(taps_store: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"block 2 is not in this store; it holds blocks \[1, 3\]"):
        open_store(taps_store).torch_dataset(2)
    with pytest.raises(StoreError, match="tap 'sum:4' is not in this store"):
        open_store(taps_store).torch_dataset(["sum:4"])
    with pytest.raises(StoreError, match="unknown split 'nope'"):
        open_store(taps_store).torch_dataset(1, split="nope")
