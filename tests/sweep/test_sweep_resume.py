"""Memory groups and interrupt + --resume: the same results as one uninterrupted sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losa_cache.sweep import run_sweep
from tests.sweep.conftest import adapter_weights, same

GRID = {"lr": [0.01, 0.05], "task": ["full", "half"], "batching": "loop"}


def weights(res: dict) -> dict[str, dict]:
    return {f"{r['task']}/{r['run']}": adapter_weights(r["adapter"]) for r in res["results"]}


def accs(res: dict) -> dict[str, tuple]:
    return {f"{r['task']}/{r['run']}": (r["val_acc"], r["test_acc"]) for r in res["results"]}


@pytest.fixture(scope="module")
def straight(sweep_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from losa_cache.sweep import SweepConfig
    from tests.sweep.conftest import SMALL

    out = tmp_path_factory.mktemp("straight") / "sweep"
    return run_sweep(
        SweepConfig(store=sweep_store, out=str(out), **{**SMALL, **GRID}), progress=False
    )


def test_memory_budget_splits_into_groups_with_the_same_results(make_sweep, straight) -> None:
    biggest = max(r["train_memory_est"] for r in straight["results"])
    res = run_sweep(make_sweep(memory_budget=biggest * 3, **GRID), progress=False)
    groups = res["summary"]["groups"]
    assert len(groups) >= 3 and all(g["estimate_bytes"] <= biggest * 3 for g in groups)
    assert sorted(k for g in groups for k in g["runs"]) == sorted(weights(straight))
    got, ref = weights(res), weights(straight)
    assert all(same(got[k], ref[k]) for k in ref)
    assert accs(res) == accs(straight)


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_stop_and_resume_gives_the_uninterrupted_results(make_sweep, straight, cache) -> None:
    biggest = max(r["train_memory_est"] for r in straight["results"])
    kw = {**GRID, "cache": cache, "memory_budget": biggest * 6, "checkpoint_every": 2}
    first = run_sweep(make_sweep("cut", stop_at=1, **kw), progress=False)
    assert first["complete"] is False and first["group"] == 0
    out = Path(make_sweep("cut").out)
    assert list(out.glob("runs/*/*/checkpoint.pt")) and not (out / "results.json").exists()
    # stop again (every run after its step 3: later in the first group, or in the second),
    # then finish
    second = run_sweep(make_sweep("cut", stop_at=3, resume=True, **kw), progress=False)
    assert second.get("complete") is False and second["group"] >= first["group"]
    res = run_sweep(make_sweep("cut", resume=True, **kw), progress=False)
    assert res["summary"]["complete"] and (out / "results.json").is_file()
    # every run has its own order, streamed or cached, in any group: == the one-group sweep
    got, ref = weights(res), weights(straight)
    assert got.keys() == ref.keys() and all(same(got[k], ref[k]) for k in ref)
    assert accs(res) == accs(straight)


def test_resume_refuses_other_runs_and_fresh_start_refuses_a_sweep(make_sweep) -> None:
    run_sweep(make_sweep("a", stop_at=1), progress=False)
    with pytest.raises(ValueError, match="already holds a sweep"):
        run_sweep(make_sweep("a"), progress=False)
    with pytest.raises(ValueError, match="runs differ"):
        run_sweep(make_sweep("a", resume=True, rank=[8]), progress=False)
    with pytest.raises(FileNotFoundError, match=r"no sweep\.json"):
        run_sweep(make_sweep("b", resume=True), progress=False)
    doc = json.loads((Path(make_sweep("a").out) / "sweep.json").read_text())
    assert len(doc["runs"]) == 3 and doc["groups"]


SCRIPT = """
import sys, torch, typer
torch.set_num_threads(1)
from losa_cache.cli.sweep_cmds import report, sweep
app = typer.Typer()
app.command()(sweep)
app.command()(report)
app(sys.argv[1:])
"""


def test_ctrl_c_checkpoints_then_resume_matches(make_sweep, sweep_store, tmp_path) -> None:
    """A real SIGINT to the CLI: checkpoint, exit 130; --resume == uninterrupted."""
    import signal
    import subprocess
    import sys
    import time

    kw = {"method": ["losa"], "layers": ["all"], "steps": 150, "batching": "loop"}
    out = Path(make_sweep("int").out)
    args = [
        sys.executable,
        "-c",
        SCRIPT,
        "sweep",
        "--store",
        sweep_store,
        "--out",
        str(out),
        "--task",
        "full",
        "--method",
        "losa",
        "--rank",
        "4",
        "--layers",
        "all",
        "--lr",
        "0.05",
        "--steps",
        "150",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "1",
        "--speed-batches",
        "0",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--amp",
        "fp32",
        "--json",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        run_ckpt = out / "runs" / "full" / "losa-r4-all-lr0.05" / "checkpoint.pt"
        while not run_ckpt.exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    state = torch.load(run_ckpt, weights_only=True)
    assert 0 < state["step"] < 150
    res = run_sweep(make_sweep("int", resume=True, **kw), progress=False)
    whole = run_sweep(make_sweep("whole", **kw), progress=False)
    assert same(weights(res)["full/losa-r4-all-lr0.05"], weights(whole)["full/losa-r4-all-lr0.05"])
