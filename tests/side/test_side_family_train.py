"""Every trainable side network through the engine: a sweep member == the same run alone,
and live training == training from the store (the helpers of tests/sweep and tests/train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losa_cache.sweep import run_sweep
from losa_cache.train import TrainConfig, train
from tests.sweep.conftest import SMALL as SWEEP_SMALL
from tests.sweep.conftest import (
    adapter_weights,
    checkpoint_weights,
    same,
    sweep_store,  # noqa: F401  (fixture)
)
from tests.sweep.test_sweep_exact import alone, curves, specs
from tests.train.conftest import SMALL as TRAIN_SMALL
from tests.train.test_train_live import LIVE, losses

torch.set_num_threads(1)

NEW = ("lowrank_mlp", "transformer")


def test_new_side_networks_in_a_sweep_equal_them_alone(
    sweep_store: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from losa_cache.sweep import SweepConfig

    cfg = SweepConfig(
        **{
            **SWEEP_SMALL,
            "store": sweep_store,
            "out": str(tmp_path / "sweep"),
            "method": ["losa", *NEW],
            "layers": ["evenly:2"],
            "steps": 5,
        }
    )
    res = run_sweep(cfg, progress=False)
    assert sorted(r["method"] for r in res["results"]) == sorted(["losa", *NEW])
    for key, spec in specs(cfg.out).items():
        if spec.train.method not in NEW:
            continue
        ref = alone(spec, tmp_path / "alone")
        ref_dir = tmp_path / "alone" / spec.task / spec.id
        assert same(adapter_weights(spec.train.out), adapter_weights(ref_dir)), key
        assert same(checkpoint_weights(spec.train.out), ref["weights"]), key
        assert curves(spec.train.out) == curves(ref_dir), key


@pytest.mark.parametrize("method", NEW)
def test_live_training_equals_store_training(method: str, micro_store: str, tmp_path: Path) -> None:
    common = {
        **TRAIN_SMALL,
        "method": method,
        "hidden": 16,
        "steps": 4,
        "eval_every": 4,
        "shuffle_buffer": 32,
        "cache": "none",
        "store": micro_store,
    }
    cached = TrainConfig(**{**common, "out": str(tmp_path / "cached")})
    live = TrainConfig(**{**common, **LIVE, "out": str(tmp_path / "live")})
    mc, ml = train(cached, progress=False), train(live, progress=False)
    torch.testing.assert_close(
        torch.tensor(losses(live.out)), torch.tensor(losses(cached.out)), rtol=1e-5, atol=1e-6
    )
    assert ml["test_acc"] == mc["test_acc"]
    side = json.loads((Path(live.out) / "adapter.json").read_text())["side_config"]
    assert side["method"] == method and side.get("hidden", 16) == 16  # where it reads one
