"""``losa-cache eval`` of a sweep member's adapter equals the member's own metrics, also
on a task that labels only half the rows (one evaluation routine for sweep and eval)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.sweep import run_sweep


def test_eval_of_each_member_equals_its_metrics(make_sweep, sweep_store: str) -> None:
    cfg = make_sweep(
        task=["half"], method=["losa", "linear"], layers=["evenly:2"], cache="none", batch_size=5
    )
    res = run_sweep(cfg, progress=False)
    assert len(res["results"]) == 2
    for row in res["results"]:
        metrics = json.loads((Path(row["adapter"]) / "metrics.json").read_text())
        out = CliRunner().invoke(
            app, ["eval", "--adapter", row["adapter"], "--store", sweep_store, "--json"]
        )
        assert out.exit_code == 0, out.output
        got = json.loads(out.stdout)
        assert got["task"] == "half" and got["count"] == 24  # every other of 48 test rows
        assert (got["accuracy"], got["loss"]) == (metrics["test_acc"], metrics["test_loss"])
        assert got["accuracy"] == row["test_acc"] and got["batch_size"] == 5
