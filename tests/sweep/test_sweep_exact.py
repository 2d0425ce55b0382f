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
from tests.sweep.conftest import adapter_weights, checkpoint_weights, same


def alone(spec: RunSpec, where: Path) -> dict:
    cfg = dataclasses.replace(spec.train, out=str(where / spec.task / spec.id))
    metrics = train(cfg, progress=False)
    return {"weights": checkpoint_weights(cfg.out), "metrics": metrics}


def specs(out: str) -> dict[str, RunSpec]:
    doc = json.loads((Path(out) / "sweep.json").read_text())
    return {f"{r['task']}/{r['id']}": RunSpec.from_dict(r) for r in doc["runs"]}


CURVES = ("kind", "step", "loss", "acc", "lr", "epoch", "split")


def curves(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl without the timing fields (img/s differs between processes)."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: r.get(k) for k in CURVES} for r in map(json.loads, lines)]


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_train_equals_a_sweep_of_one_equals_a_member_of_six(make_sweep, tmp_path, cache) -> None:
    """Both tasks ('half' labels every other row); 7 steps of 8 cross an epoch of 'half'.
    Every member: the same adapter, metrics and learning curves as trained alone."""
    cfg = make_sweep(cache=cache, batching="loop", task=["full", "half"], eval_every=3, log_every=2)
    res = run_sweep(cfg, progress=False)
    rows = {f"{r['task']}/{r['run']}": r for r in res["results"]}
    assert len(rows) == 6 and res["summary"]["mode"] == (
        "memory" if cache == "ram" else "streaming"
    )
    for key, spec in specs(cfg.out).items():
        ref = alone(spec, tmp_path / "alone")
        ref_dir = tmp_path / "alone" / spec.task / spec.id
        assert same(adapter_weights(spec.train.out), adapter_weights(ref_dir)), key
        assert same(checkpoint_weights(spec.train.out), ref["weights"]), key
        assert curves(spec.train.out) == curves(ref_dir), key
        row = rows[key]
        assert row["test_acc"] == ref["metrics"]["test_acc"]
        assert row["val_acc"] == ref["metrics"]["final_val_acc"]
        assert row["train_images"] == 7 * 8 and row["status"] == "trained"
    # a sweep of one: the same again
    key = "half/losa-r4-evenly2-lr0.05"
    spec = specs(cfg.out)[key]
    one = run_sweep(
        make_sweep(
            "one",
            cache=cache,
            task=["half"],
            method=["losa"],
            layers=["evenly:2"],
            eval_every=3,
            log_every=2,
        ),
        progress=False,
    )
    (only,) = one["results"]
    assert same(adapter_weights(only["adapter"]), adapter_weights(spec.train.out))
    assert curves(only["adapter"]) == curves(spec.train.out)
    assert only["test_acc"] == rows[key]["test_acc"]


def test_a_diverged_run_stops_alone_with_its_last_good_checkpoint(make_sweep) -> None:
    entries = [
        {"method": "linear", "lr": 1e6},
        {"method": "linear", "lr": 0.05},
        {"method": "losa", "rank": 4, "layers": "all", "lr": 0.05},
    ]
    res = run_sweep(
        make_sweep("nan", configs=entries, steps=20, checkpoint_every=1, cache="none"),
        progress=False,
    )
    rows = {r["run"]: r for r in res["results"]}
    bad = rows["linear-lr1e+06"]
    assert bad["status"] == "diverged" and bad["adapter"] is None and bad["step"] < 20
    (named,) = res["summary"]["diverged"]
    assert named["run"] == "full/linear-lr1e+06" and "last good checkpoint" in named["error"]
    kept = torch.load(named["last_checkpoint"], weights_only=True)
    assert kept["step"] < bad["step"] + 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values())
    for run in ("linear-lr0.05", "losa-r4-all-lr0.05"):
        assert rows[run]["status"] == "trained" and rows[run]["test_acc"] is not None
        assert rows[run]["step"] == 20
    from losa_cache.cli.sweep_cmds import summary

    assert (
        f"diverged full/linear-lr1e+06: stopped alone; last good checkpoint: "
        f"{named['last_checkpoint']}" in summary(res)
    )


def test_vmap_mode_matches_up_to_float_rounding(make_sweep, tmp_path) -> None:
    cfg = make_sweep(batching="vmap", lr=[0.01, 0.05], layers=["all"])
    res = run_sweep(cfg, progress=False)
    stats = json.loads((Path(cfg.out) / "groups" / "0.json").read_text())
    assert {b["mode"] for b in stats["batching"]} == {"vmap"}
    for spec in specs(cfg.out).values():
        ref = alone(spec, tmp_path / "alone")
        assert same(adapter_weights(spec.train.out), ref["weights"], atol=1e-5), spec.id
    assert all(r["status"] == "trained" for r in res["results"])


def test_auto_batching_loops_on_cpu_and_can_time_both(make_sweep) -> None:
    cfg = make_sweep(lr=[0.01, 0.05], layers=["all"], method=["losa"])
    run_sweep(cfg, progress=False)
    stats = json.loads((Path(cfg.out) / "groups" / "0.json").read_text())
    (group,) = stats["batching"]
    assert group["mode"] == "loop" and len(group["runs"]) == 2
    # the timing CUDA uses: both ways on throwaway copies, weights untouched
    from losa_cache.train.batching import ShapeGroup
    from losa_cache.train.trainer import make_run, open_source

    spec = specs(cfg.out)["full/losa-r4-all-lr0.01"]
    train_cfg = dataclasses.replace(spec.train, out=str(Path(cfg.out) / "timing"))
    source = open_source(train_cfg, torch.device("cpu"))
    members = [make_run(train_cfg, source, torch.device("cpu")) for _ in range(2)]
    before = {k: v.clone() for k, v in members[0].model.state_dict().items()}
    feats = {i: torch.randn(8, 17, 32) for i in range(4)}
    shapes = ShapeGroup(members, "auto")
    assert shapes.choose(members, feats, np.arange(8)) in ("loop", "vmap")
    assert set(shapes.timing) == {"loop", "vmap"}
    assert same(members[0].model.state_dict(), before)
