"""sweep --live: the backbone runs once per piece for every config; each == train --live."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from losa_cache.cli.sweep_cmds import sweep
from losa_cache.sweep import RunSpec
from losa_cache.train import train
from tests.sweep.conftest import adapter_weights, same

LIVE = ["--live", "--model", "vit_micro", "--random-init", "--dataset", "demo", "--limit", "32"]


def test_live_sweep_members_equal_live_runs_alone(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(sweep)
    app.command("noop")(lambda: None)
    out = tmp_path / "live"
    res = CliRunner().invoke(app, [
        "sweep", *LIVE, "--out", str(out), "--method", "losa,linear", "--rank", "4",
        "--layers", "evenly:2,all", "--lr", "0.05", "--steps", "5", "--batch-size", "8",
        "--eval-every", "5", "--speed-batches", "0", "--device", "cpu", "--workers", "0",
        "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["mode"] == "live" and doc["summary"]["bytes_read"] == 0
    rows = {r["run"]: r for r in doc["results"]}
    assert set(rows) == {"losa-r4-evenly2-lr0.05", "losa-r4-all-lr0.05", "linear-lr0.05"}
    for r in json.loads((out / "sweep.json").read_text())["runs"]:
        spec = RunSpec.from_dict(r)
        assert spec.train.live and spec.train.model == "vit_micro"
        alone = dataclasses.replace(spec.train, out=str(tmp_path / "alone" / spec.id))
        m = train(alone, progress=False)
        assert same(adapter_weights(alone.out), adapter_weights(spec.train.out)), spec.id
        assert m["test_acc"] == rows[spec.id]["test_acc"]
        assert m["final_val_acc"] == rows[spec.id]["val_acc"]
