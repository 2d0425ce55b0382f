"""Training from int8 stores: the feed carries codes and scales, batches are dequantized.

The reference is an fp32 store whose features are exactly the int8 store's dequantized
values (q * s): every feed mode must give the same batches and the same training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from losa_cache.store import open_store
from losa_cache.store.schema import PER_BLOCK_TAPS, tap_kind
from losa_cache.train import TrainConfig, train
from losa_cache.train.engine import Inputs
from losa_cache.train.feed import Quantized, to_device
from losa_cache.train.reader import StoreReader, labelled_rows
from losa_cache.train.sources import StoreSource
from losa_cache.train.trainer import choose_inputs
from tests.train._train_helpers import losses

RUN = {
    "batch_size": 8,
    "steps": 5,
    "eval_every": 5,
    "log_every": 1,
    "workers": 1,
    "device": "cpu",
    "amp": "fp32",
    "shuffle_buffer": 16,
}
T, D = 17, 32  # vit_micro


@pytest.fixture(scope="module")
def int8_pair(
    tap_stores: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(int8 store of blocks, embed, sum:2; fp32 store of exactly its dequantized values)."""
    from losa_cache.store.subset import subset_store

    root = tmp_path_factory.mktemp("int8_feed")
    q, ref = str(root / "q.zarr"), str(root / "deq.zarr")
    subset_store(tap_stores["taps"], q, taps="blocks,embed,sum:2", dtype="int8")
    subset_store(tap_stores["taps"], ref, taps="blocks,embed,sum:2")
    quant, group = open_store(q), zarr.open_group(ref, mode="r+")
    for path, tap, block in quant.layout.tap_arrays():
        arr = quant.tap_features(tap, block if tap_kind(tap) in PER_BLOCK_TAPS else None)
        group[path][:] = arr[:]  # float32 q * s
    exact = open_store(tap_stores["taps"]).features(1)[:8]
    assert not np.array_equal(open_store(ref).features(1)[:8], exact)  # int8 lost some
    return q, ref


def test_pieces_hold_codes_and_batches_equal_the_store_values(int8_pair) -> None:
    store = open_store(int8_pair[0])
    rows, labels = labelled_rows(store, "train", None)
    keys = [1, "embed", "sum:2"]
    with StoreReader(store, rows, labels, keys, 8, seed=1, buffer_rows=16) as reader:
        assert reader.direct  # codes and scales by preadv straight into the window
        piece = next(reader.pieces(0, loop=False, shuffle=True))
        for key in keys:
            v = piece.feats[key]
            assert isinstance(v, Quantized) and v.codes.dtype == torch.int8
            assert v.codes.shape == (16, T, D) and v.scales.dtype == torch.float16
        # a window is its codes and scales: 1 byte a value plus 2 a token
        assert reader.memory["window_bytes"] == 16 * len(keys) * T * (D + 2)
        batches = list(reader.eval_batches(8))
    got = {k: torch.cat([b.features[k] for b in batches]) for k in keys}
    order = np.concatenate([b.rows.numpy() for b in batches])
    assert np.array_equal(order, rows)
    want = {
        1: store.features(1)[rows],
        "embed": store.tap_features("embed")[rows],
        "sum:2": store.tap_features("sum:2")[rows],
    }
    for k in keys:
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], torch.from_numpy(want[k])), k


def test_info_counts_int8_rows_at_their_real_size(int8_pair) -> None:
    from losa_cache.store.info import store_info

    info = store_info(int8_pair[0])
    arrays = len(open_store(int8_pair[0]).layout.tap_arrays())  # 4 blocks, embed, sum:2
    assert info["bytes_logical"] == info["num_images"] * arrays * T * (D + 2)


def test_to_device_dequantizes_what_crossed_as_codes() -> None:
    codes = torch.randint(-127, 128, (3, T, D), dtype=torch.int8)
    scales = torch.rand(3, T).half()
    feats = {"embed": Quantized(codes, scales), 0: torch.ones(3, T, D)}
    out = to_device(feats, torch.device("cpu"))
    assert torch.equal(out["embed"], codes.float() * scales.float()[..., None])
    assert torch.equal(out[0], torch.ones(3, T, D))


def test_memory_cache_holds_codes_and_sizes_them(int8_pair) -> None:
    source = StoreSource(int8_pair[0])
    rows = source.split_rows("train")
    assert source.info.feed_bytes([1, "sum:2"]) == 2 * T * (D + 2)
    assert source.info.feed_bytes(["sum:4"]) == 4 * T * D  # summed from blocks: fp32
    inputs = choose_inputs("ram", source, torch.device("cpu"), [rows], {1, "sum:2"}, 1, False)
    assert isinstance(inputs, Inputs) and inputs.choice.bytes == len(rows) * 2 * T * (D + 2)
    cache = inputs.cache
    assert cache is not None and cache.nbytes == inputs.choice.bytes
    assert all(isinstance(v, Quantized) for v in cache.feats.values())


@pytest.mark.parametrize("cache", ["none", "ram"])
@pytest.mark.parametrize(
    "method",
    [
        {"method": "losa", "rank": 4, "layers": "evenly:2"},
        {"method": "mist", "gather_k": 2, "width": 8},
        {"method": "mist", "gather_k": 3, "width": 8},
    ],
)
def test_training_from_int8_equals_training_from_its_dequantized_values(
    int8_pair, tmp_path: Path, cache: str, method: dict
) -> None:
    """losa reads blocks, mist sum:2 (stored), mist sum:3 (summed from int8 blocks)."""
    q, ref = int8_pair
    a = train(
        TrainConfig(store=q, out=str(tmp_path / "q"), cache=cache, **RUN, **method), progress=False
    )
    b = train(
        TrainConfig(store=ref, out=str(tmp_path / "ref"), cache=cache, **RUN, **method),
        progress=False,
    )
    assert a["complete"] and a["feed"]["cache"]["mode"] == cache
    assert losses(str(tmp_path / "q")) == losses(str(tmp_path / "ref"))
    wa = torch.load(tmp_path / "q" / "checkpoint.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["test_acc"] == b["test_acc"]
    assert a["bytes_read"] < b["bytes_read"]  # codes: about a quarter of fp32
