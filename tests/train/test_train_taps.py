"""The feed reads store taps: embed, sum:k (stored or summed from blocks), attn:i, mlp:i.

Stores here are vit_micro (4 blocks, D 32, T 17) over 32 demo rows per split, fp32, so
stored and live features agree to float rounding and a summed ``sum:k`` is bit-identical
to the stored one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from losa_cache.store import StoreError, open_store
from losa_cache.train import TrainConfig, train
from losa_cache.train.keys import available_keys, plan_reads, sort_keys
from losa_cache.train.live import LiveSource
from losa_cache.train.order import RowOrder
from losa_cache.train.reader import StoreReader, labelled_rows
from tests.train._train_helpers import LIVE_MICRO, losses

MIST = {
    "method": "mist",
    "gather_k": 2,
    "width": 8,
    "heads": 2,
    "edge_blocks": 2,
    "batch_size": 8,
    "steps": 6,
    "eval_every": 3,
    "log_every": 1,
    "workers": 1,
    "device": "cpu",
    "amp": "fp32",
    "shuffle_buffer": 16,
}
LIVE = {**LIVE_MICRO, "workers": 0}


def weights(out: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["model"]


def test_keys_sort_map_to_taps_and_plan_derived_sums() -> None:
    assert sort_keys(["sum:8", 3, "mlp:1", "embed", 0, "attn:2", "sum:2"]) == (
        0,
        3,
        "embed",
        "attn:2",
        "mlp:1",
        "sum:2",
        "sum:8",
    )
    held = available_keys(["blocks", "embed", "attn"], [0, 1, 2])
    assert held == (0, 1, 2, "embed", "attn:0", "attn:1", "attn:2")
    reads, derived, missing = plan_reads(["sum:3", "attn:1", "sum:4", "mlp:1"], held)
    assert reads == (0, 1, 2, "embed", "attn:1") and derived == {"sum:3": ("embed", 0, 1, 2)}
    assert missing == ["mlp:1", "sum:4"]  # sum:4 needs block 3


def test_store_pieces_equal_live_pieces_for_every_key(tap_stores: dict[str, str]) -> None:
    """Blocks and each kind of tap, stored or derived: the same keys, rows and values from
    the store reader and the live backbone (forward.py), in the same order."""
    keys = [1, "embed", "attn:2", "mlp:2", "sum:2", "sum:3"]  # sum:3: summed from blocks
    store = open_store(tap_stores["taps"])
    rows, labels = labelled_rows(store, "train", None)
    cfg = TrainConfig(out="unused", amp="fp32", **LIVE)
    live = LiveSource(cfg, torch.device("cpu"))
    order = RowOrder(live.split_rows("train"), 16, seed=3)
    with StoreReader(store, rows, labels, keys, 8, seed=3, buffer_rows=16, workers=2) as reader:
        assert reader.derived == {"sum:3": ("embed", 0, 1, 2)}
        stored = list(reader.pieces(0, loop=False, shuffle=True))
    feed = live.feed(order, live.split_rows("train"), keys, 16, torch.device("cpu"), 0)
    computed = list(feed.pieces(0, loop=False, shuffle=True))
    assert len(stored) == len(computed) == 2
    for s, c in zip(stored, computed, strict=True):
        np.testing.assert_array_equal(s.rows, c.rows)
        assert list(s.feats) == list(c.feats) == list(sort_keys(keys))
        for key in s.feats:
            assert s.feats[key].shape == (16, 17, 32) and s.feats[key].dtype == torch.float32
            torch.testing.assert_close(
                s.feats[key], c.feats[key], rtol=1e-5, atol=1e-5, msg=f"key {key!r}"
            )
    # the derived sum is the stored tap's arithmetic: bit-identical for fp32 stores
    sums = {k: store.tap_features(f"sum:{k}")[np.sort(stored[0].rows)] for k in (2,)}
    got = stored[0].feats["sum:2"][np.argsort(stored[0].rows)]
    assert torch.equal(got, torch.from_numpy(sums[2]))


def test_derived_sum_is_bit_identical_to_the_stored_tap(tap_stores: dict[str, str]) -> None:
    parts, full = open_store(tap_stores["parts"]), open_store(tap_stores["taps"])
    rows, labels = labelled_rows(parts, "val", None)
    with StoreReader(parts, rows, labels, ["sum:4"], 8, buffer_rows=8) as reader:
        assert reader.derived == {"sum:4": ("embed", 0, 1, 2, 3)}
        piece = next(reader.pieces(0, loop=False, shuffle=False))
    want = full.tap_features("sum:4")[piece.rows]
    assert torch.equal(piece.feats["sum:4"], torch.from_numpy(want))


@pytest.mark.parametrize("cache", ["none", "ram"])
def test_mist_from_sum_equals_mist_from_blocks_summed(
    tap_stores: dict[str, str], tmp_path: Path, cache: str
) -> None:
    """MIST on the store's sum:2 == MIST on a store of z0, b_0, b_1 summed by the feed:
    same batches, same seed, exactly (fp32)."""
    a = train(
        TrainConfig(store=tap_stores["taps"], out=str(tmp_path / "sum"), cache=cache, **MIST),
        progress=False,
    )
    b = train(
        TrainConfig(store=tap_stores["parts"], out=str(tmp_path / "parts"), cache=cache, **MIST),
        progress=False,
    )
    assert a["complete"] and b["complete"] and a["method"] == "mist"
    # metrics: "layers" the side network's blocks (none), "inputs" every key it reads
    assert a["layers"] == b["layers"] == [] and a["inputs"] == b["inputs"] == ["sum:2"]
    assert losses(str(tmp_path / "sum")) == losses(str(tmp_path / "parts"))
    wa, wb = weights(str(tmp_path / "sum")), weights(str(tmp_path / "parts"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["test_acc"] == b["test_acc"] and a["final_val_acc"] == b["final_val_acc"]
    assert a["feed"]["cache"]["mode"] == cache


def test_cached_mist_equals_live_mist(tap_stores: dict[str, str], tmp_path: Path) -> None:
    """The live backbone computes sum:2 with extraction's forward: the same training."""
    common = {**MIST, "cache": "none", "eval_every": 6}
    cached = TrainConfig(store=tap_stores["taps"], out=str(tmp_path / "cached"), **common)
    live = TrainConfig(out=str(tmp_path / "live"), **{**common, **LIVE})
    mc, ml = train(cached, progress=False), train(live, progress=False)
    assert ml["live"] and mc["buffer_rows"] == ml["buffer_rows"] == 16
    torch.testing.assert_close(
        torch.tensor(losses(live.out)), torch.tensor(losses(cached.out)), rtol=1e-5, atol=1e-6
    )
    wc, wl = weights(cached.out), weights(live.out)
    for key in wc:
        torch.testing.assert_close(wl[key], wc[key], rtol=1e-4, atol=1e-5)
    assert ml["test_acc"] == mc["test_acc"]


def test_cli_trains_mist_on_a_store_of_the_sum_tap_only(
    tap_stores: dict[str, str], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--store",
            tap_stores["sum4"],
            "--method",
            "mist",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--workers",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["step"] == 3 and metrics["method"] == "mist"
    assert open_store(tap_stores["sum4"]).taps == ["sum:4"]  # nothing else to read


def test_missing_taps_name_the_tap_what_is_held_and_the_fix(
    tap_stores: dict[str, str], tmp_path: Path
) -> None:
    store = open_store(tap_stores["sum4"])
    rows, labels = labelled_rows(store, "train", None)
    with pytest.raises(StoreError) as err:
        StoreReader(store, rows, labels, ["sum:3"], 8)
    msg = str(err.value)
    assert "\n" not in msg and "tap sum:3" in msg and "holds taps ['sum:4']" in msg
    source = open_store(tap_stores["sum4"]).manifest.subset["source"]  # a subset: copy from there
    assert f"`losa-cache subset {source} NEW_STORE --taps sum:3`" in msg
    assert "embed and blocks 0..2" in msg
    with pytest.raises(StoreError, match=r"tap attn \(block 1\).*subset \S+ NEW_STORE --taps attn"):
        StoreReader(open_store(tap_stores["parts"]), rows, labels, ["attn:1"], 8)
    cfg = TrainConfig(store=tap_stores["sum4"], out=str(tmp_path / "run"),
                      **{**MIST, "gather_k": 3})  # fmt: skip
    with pytest.raises(StoreError, match=r"^mist reads the store tap sum:3, which"):
        train(cfg, progress=False)


def test_sweep_members_reading_taps_equal_runs_alone(
    tap_stores: dict[str, str], tmp_path: Path
) -> None:
    """mist (sum:4) and losa (blocks) share one feed in a sweep; each == trained alone."""
    from losa_cache.sweep import RunSpec, SweepConfig, run_sweep

    cfg = SweepConfig(
        store=tap_stores["taps"],
        out=str(tmp_path / "sweep"),
        method=["mist", "losa"],
        rank=[4],
        layers=["evenly:2"],
        lr=[0.05],
        steps=5,
        batch_size=8,
        device="cpu",
        workers=1,
        speed_batches=0,
        amp="fp32",
        cache="none",
    )
    run_sweep(cfg, progress=False)
    doc = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    specs = [RunSpec.from_dict(r) for r in doc["runs"]]
    assert {s.train.method for s in specs} == {"mist", "losa"}
    for spec in specs:
        alone = dataclasses.replace(spec.train, out=str(tmp_path / "alone" / spec.id))
        train(alone, progress=False)
        assert losses(spec.train.out) == losses(alone.out), spec.id
        wa, wb = weights(spec.train.out), weights(alone.out)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), spec.id


def test_a_key_the_live_backbone_cannot_give_is_named_with_what_it_gives() -> None:
    """Live mode has no store to extend: the error says what the backbone computes."""
    from losa_cache.train.sources import SourceInfo, build_side_config

    info = SourceInfo(
        depth=4,
        dim=32,
        tokens=17,
        prefix_tokens=1,
        layers=(0, 1, 2, 3),
        fingerprint={},
        splits=["train"],
        default_task="t",
        dtype=torch.float32,
        row_bytes=17 * 32 * 4,
        taps=(),
        live=True,
    )
    cfg = TrainConfig(store="unused.zarr", out="unused", **MIST)
    with pytest.raises(StoreError) as err:
        build_side_config(cfg, info, num_classes=3)
    msg = str(err.value)
    assert "\n" not in msg and "reads 'sum:2', which the live backbone does not compute" in msg
    assert "blocks 0..3; no taps: not a timm ViT" in msg and "--extend" not in msg
    with_taps = SourceInfo(**{**vars(info), "taps": ("embed", "sum:1", "sum:2")})
    assert build_side_config(cfg, with_taps, num_classes=3).method == "mist"
