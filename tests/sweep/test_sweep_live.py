"""sweep --live: the backbone runs once per piece for every config; each == train --live."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
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
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            *LIVE,
            "--out",
            str(out),
            "--method",
            "losa,linear",
            "--rank",
            "4",
            "--layers",
            "evenly:2,all",
            "--lr",
            "0.05",
            "--steps",
            "5",
            "--batch-size",
            "8",
            "--eval-every",
            "5",
            "--speed-batches",
            "0",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--json",
        ],
    )
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


def test_live_baselines_join_a_live_sweep_one_after_another(tmp_path: Path) -> None:
    """Baselines need their own backbone forward: one group each, before the side networks'
    shared pass; every member equals `train --live` of its config alone, bit for bit."""
    app = typer.Typer()
    app.command()(sweep)
    app.command("noop")(lambda: None)
    out = tmp_path / "mixed"
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            *LIVE,
            "--out",
            str(out),
            "--method",
            "losa,linear,lora,vpt,partial",
            "--rank",
            "2",
            "--layers",
            "all",
            "--lr",
            "0.01",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--eval-every",
            "3",
            "--speed-batches",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--optimizer",
            "adamw",
            "--amp",
            "fp32",
            "--prompt-tokens",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rows = {r["run"]: r for r in doc["results"]}
    assert set(rows) == {
        "losa-r2-all-lr0.01-adamw",
        "linear-lr0.01-adamw",
        "lora-r2-lr0.01-adamw",
        "vpt-lr0.01-adamw",
        "partial-lr0.01-adamw",
    }
    groups = [g["runs"] for g in doc["summary"]["groups"]]
    baselines = [
        g for g in groups if any(k.split("/")[1].startswith(("lora", "vpt", "partial")) for k in g)
    ]
    assert len(baselines) == 3 and all(len(g) == 1 for g in baselines)  # one each
    assert groups[:3] == baselines and len(groups[3]) == 2  # then losa + linear together
    for r in json.loads((out / "sweep.json").read_text())["runs"]:
        spec = RunSpec.from_dict(r)
        alone = dataclasses.replace(spec.train, out=str(tmp_path / "alone" / spec.id))
        m = train(alone, progress=False)
        assert same(adapter_weights(alone.out), adapter_weights(spec.train.out)), spec.id
        assert m["test_acc"] == rows[spec.id]["test_acc"]
        assert m["learned_params"] == rows[spec.id]["learned_params"]
        assert rows[spec.id]["train_img_s"] > 0 and rows[spec.id]["train_memory_b1"] > 0
    lora = rows["lora-r2-lr0.01-adamw"]
    assert lora["rank"] == 2 and lora["blocks"] == [0, 1, 2, 3]
    for r in rows.values():  # the paper's setting for all; a baseline's only setting
        assert r["train_memory_b1_live"] > 0 and r["infer_memory_b1"] > 0
        assert r["infer_img_s_b1"] > 0 and r["train_img_s_live"] > 0
        assert r["total_gmacs"] == pytest.approx(r["backbone_gmacs"] + r["side_gmacs"])
        if r["method"] in ("lora", "vpt", "partial"):
            assert r["train_memory_b1_live"] == r["train_memory_b1"]
            assert r["train_img_s_live"] == r["train_img_s"]
        else:
            assert r["train_memory_b1_live"] > r["train_memory_b1"]
    best = doc["summary"]["best"][rows["lora-r2-lr0.01-adamw"]["task"]]["adapter"]
    assert (Path(best) / "adapter.json").is_file()  # a baseline may be exported as best


def test_a_baseline_in_a_store_sweep_names_the_fix(make_sweep) -> None:
    with pytest.raises(ValueError, match=r"--method lora trains the backbone.*add --live"):
        make_sweep(method=["losa", "lora"])
