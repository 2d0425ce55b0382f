"""A run trained in a sweep == the same TrainConfig trained alone with ``train()``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from losa_cache.sweep import RunSpec, run_sweep
from losa_cache.train import train
from tests.sweep.conftest import adapter_weights, checkpoint_weights, num_classes, same


def alone(spec: RunSpec, where: Path) -> dict:
    cfg = dataclasses.replace(spec.train, out=str(where / spec.task / spec.id))
    metrics = train(cfg, progress=False)
    return {"weights": checkpoint_weights(cfg.out), "metrics": metrics}


def specs(out: str) -> dict[str, RunSpec]:
    doc = json.loads((Path(out) / "sweep.json").read_text())
    return {f"{r['task']}/{r['id']}": RunSpec.from_dict(r) for r in doc["runs"]}


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_loop_mode_is_bit_identical_to_training_alone(make_sweep, tmp_path, cache) -> None:
    """Both tasks; 7 steps of 8 cross an epoch of the 24-row 'half' task."""
    cfg = make_sweep(cache=cache, batching="loop", tasks=["full", "half"])
    res = run_sweep(cfg, progress=False)
    rows = {f"{r['task']}/{r['run']}": r for r in res["results"]}
    assert len(rows) == 6 and res["summary"]["mode"] == ("memory" if cache == "ram"
                                                         else "streaming")
    for key, spec in specs(cfg.out).items():
        ref = alone(spec, tmp_path / "alone")
        swept = adapter_weights(spec.train.out)
        row = rows[key]
        if cache == "ram" or spec.task == "full":
            # memory: every run has its own batch order; streaming: runs of the task that
            # labels every row follow the one read order, which is their own
            assert row["order"] == "exact", key
            assert same(swept, ref["weights"]), key
            assert row["test_acc"] == pytest.approx(ref["metrics"]["test_acc"])
            assert row["val_acc"] == pytest.approx(ref["metrics"]["final_val_acc"])
        else:
            # streaming, a task on a subset of rows: the shared order filtered to its rows
            assert row["order"] == "shared" and row["train_images"] == 7 * 8, key


def test_vmap_mode_matches_up_to_float_rounding(make_sweep, tmp_path) -> None:
    cfg = make_sweep(batching="vmap", lrs=[0.01, 0.05], layers=["all"])
    res = run_sweep(cfg, progress=False)
    stats = json.loads((Path(cfg.out) / "groups" / "0.json").read_text())
    assert {b["mode"] for b in stats["batching"]} == {"vmap"}
    for spec in specs(cfg.out).values():
        ref = alone(spec, tmp_path / "alone")
        assert same(adapter_weights(spec.train.out), ref["weights"], atol=1e-5), spec.id
    assert all(r["status"] == "trained" for r in res["results"])


def test_auto_batching_loops_on_cpu_and_can_time_both(make_sweep) -> None:
    cfg = make_sweep(lrs=[0.01, 0.05], layers=["all"], methods=["losa"])
    run_sweep(cfg, progress=False)
    stats = json.loads((Path(cfg.out) / "groups" / "0.json").read_text())
    (group,) = stats["batching"]
    assert group["mode"] == "loop" and len(group["runs"]) == 2
    # the timing CUDA uses: both ways on throwaway copies, weights untouched
    from losa_cache.side import SideConfig
    from losa_cache.sweep.members import Member, ShapeGroup

    spec = specs(cfg.out)["full/losa-r4-all-lr0.01"]
    side = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=num_classes(cfg.store),
                      rank=4, layers="all")
    labels = np.zeros(200, dtype=np.int64)
    members = [Member(spec, side, 48, labels, torch.device("cpu")) for _ in range(2)]
    before = {k: v.clone() for k, v in members[0].model.state_dict().items()}
    feats = {i: torch.randn(8, 17, 32) for i in range(4)}
    shapes = ShapeGroup(members, "auto")
    assert shapes.choose(members, feats, np.arange(8)) in ("loop", "vmap")
    assert set(shapes.timing) == {"loop", "vmap"}
    assert same(members[0].model.state_dict(), before)
