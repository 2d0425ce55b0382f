"""results.csv/json, the paper's efficiency metrics, best adapters, the report, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from losa_cache.adapter import load_adapter
from losa_cache.cli.sweep_cmds import report, sweep
from losa_cache.side import SideConfig, create_side, learned_params
from losa_cache.sweep import run_sweep
from losa_cache.sweep.measure import PeakTracker, memory_at, side_flops
from losa_cache.sweep.report import make_report, pareto
from losa_cache.sweep.results import CSV_COLUMNS
from tests.sweep.conftest import num_classes


@pytest.fixture(scope="module")
def done(sweep_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from losa_cache.sweep import SweepConfig
    from tests.sweep.conftest import SMALL

    out = tmp_path_factory.mktemp("done") / "sweep"
    return run_sweep(
        SweepConfig(
            store=sweep_store,
            out=str(out),
            **{**SMALL, "task": ["full", "half"], "speed_batches": 2},
        ),
        progress=False,
    )


def test_results_files_hold_every_config_and_task(done: dict) -> None:
    out = Path(done["summary"]["out"])
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0]) == CSV_COLUMNS
    assert {r["task"] for r in rows} == {"full", "half"}
    doc = json.loads((out / "results.json").read_text())
    assert doc["summary"]["runs"] == 6 and len(doc["results"]) == 6
    for r in doc["results"]:
        assert r["status"] == "trained" and 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert r["train_img_s"] > 0 and r["train_memory_b1"] > 0 and r["bytes_read"] > 0
        assert r["inference_gflops"] == pytest.approx(r["backbone_gflops"] + r["side_gflops"])
        assert r["memory_kind"] == "cpu_tracked_tensors"
        assert r["total_gmacs"] == pytest.approx(r["backbone_gmacs"] + r["side_gmacs"])
        assert r["total_gmacs"] == pytest.approx(r["inference_gflops"] / 2)  # MACs = FLOPs/2
    assert doc["summary"]["bytes_read"] > 0 and doc["summary"]["mode"] == "memory"


def test_the_papers_setting_adds_the_backbone(done: dict) -> None:
    """Training memory / img/s with the backbone forward and inference at batch 1: a store
    sweep measures them on the store's backbone (random weights, vit_micro here)."""
    from losa_cache.backbone import create_backbone

    weights = sum(
        p.numel() * 4 for p in create_backbone("vit_micro", random_init=True).model.parameters()
    )
    for r in done["results"]:
        assert r["train_memory_b1_live"] > max(weights, r["train_memory_b1"])
        assert r["infer_memory_b1"] > weights and r["infer_img_s_b1"] > 0
        assert r["train_img_s_live"] > 0


def test_learned_params_exclude_the_head_and_flops_are_counted(done: dict) -> None:
    r = next(r for r in done["results"] if r["run"] == "losa-r4-all-lr0.05")
    classes = num_classes(done["summary"]["store"])
    side = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=classes, rank=4, layers="all")
    assert r["learned_params"] == learned_params(side) == create_side(side).num_learned_params()
    assert r["side_gflops"] * 1e9 == side_flops(side)
    lin = next(r for r in done["results"] if r["method"] == "linear")
    assert lin["learned_params"] == 0 and lin["side_gflops"] * 1e9 == 2 * 32 * classes  # head
    # vit_micro, all 4 blocks: the backbone dominates, as in the paper
    assert r["backbone_gflops"] > 10 * r["side_gflops"]


def test_best_config_per_task_is_exported_as_an_adapter(done: dict) -> None:
    for task, best in done["summary"]["best"].items():
        rows = [r for r in done["results"] if r["task"] == task]
        assert best["val_acc"] == max(r["val_acc"] for r in rows)
        assert sum(r["best"] for r in rows) == 1
        adapter = load_adapter(best["adapter"])
        assert adapter.task == task and Path(best["adapter"]).name == task


def test_a_new_best_replaces_an_earlier_export_without_stale_files(
    done: dict, tmp_path: Path
) -> None:
    """On --resume the best can switch from a LoRA baseline (adapter + peft folder) to a side
    network: the export drops the peft folder it had written, and nothing else."""
    from losa_cache.sweep.results import best_runs, export_best

    best = best_runs(done["results"])
    dst = tmp_path / "best" / "full"
    (dst / "peft").mkdir(parents=True)
    (dst / "peft" / "adapter_model.safetensors").write_bytes(b"old")
    (dst / "adapter.json").write_text("{}")
    (dst / "notes.txt").write_text("mine")  # not an export's file: kept
    paths = export_best(tmp_path, {"full": best["full"]})
    assert sorted(p.name for p in dst.iterdir()) == [
        "adapter.json",
        "adapter.safetensors",
        "notes.txt",
    ]
    assert load_adapter(paths["full"]).task == "full"


def test_memory_tracker_counts_weights_grads_and_momentum() -> None:
    tracker = PeakTracker()
    with tracker:
        lin = torch.nn.Linear(500, 500)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(1, 500)
        tracker.track(*lin.parameters(), x)
        lin(x).sum().backward()
        opt.step()
    weights = 501 * 500 * 4
    assert 3 * weights <= tracker.peak <= 3 * weights + 50_000
    side = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=8, rank=4, layers="all")
    one, _ = memory_at(side, "sgd", 1, torch.float16, torch.device("cpu"), False)
    two, _ = memory_at(side, "sgd", 2, torch.float16, torch.device("cpu"), False)
    assert 0 < one < two < 2 * one


def test_pareto_frontier() -> None:
    xs, accs = [0, 1, 2, 3, 1], [0.5, 0.6, 0.6, 0.9, 0.4]
    assert pareto(xs, accs, lower_is_better=True) == [True, True, False, True, False]
    assert pareto(xs, accs, lower_is_better=False) == [False, False, False, True, False]


def test_report_plots_and_compares(done: dict, tmp_path: Path) -> None:
    out = done["summary"]["out"]
    res = make_report([out, out], tmp_path / "rep", labels=["cached", "again"])
    names = {Path(p).name for p in res["pngs"]}
    assert {
        "half_acc_vs_params.png",
        "full_acc_vs_memory.png",
        "full_acc_vs_speed.png",
        "half_acc_vs_gmacs.png",
        "full_acc_vs_memory_live.png",
        "full_acc_vs_speed_live.png",
        "half_acc_vs_infer_memory.png",
        "half_acc_vs_infer_speed.png",
        "half_overview.png",
    } <= names
    assert all(Path(p).stat().st_size > 10_000 for p in res["pngs"])
    md = Path(res["markdown"]).read_text()
    assert "| cached |" in md and "| again |" in md and "(best)" in md


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(sweep)
    app.command()(report)
    return app


def test_cli_sweep_json_report_and_errors(sweep_store: str, tmp_path: Path) -> None:
    runner, out = CliRunner(), str(tmp_path / "cli")
    args = [
        "sweep",
        "--store",
        sweep_store,
        "--out",
        out,
        "--method",
        "losa,linear",
        "--rank",
        "4",
        "--layers",
        "evenly:1",
        "--lr",
        "0.05",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--speed-batches",
        "1",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]
    res = runner.invoke(cli(), [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["runs"] == 2 and (Path(out) / "results.csv").is_file()
    again = runner.invoke(cli(), args)
    assert again.exit_code == 2 and "already holds a sweep" in again.output
    assert len(again.output.strip().splitlines()) == 1
    rep = runner.invoke(cli(), ["report", out, "--compare", out, "--out", str(tmp_path / "r")])
    assert rep.exit_code == 0 and (tmp_path / "r" / "report.md").is_file()
    missing = runner.invoke(cli(), ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "no results.json" in missing.output
    for cmd in ("sweep", "report"):
        assert "Example:" in runner.invoke(cli(), [cmd, "--help"]).output


def test_sweep_without_a_test_split(sweep_store: str, tmp_path: Path) -> None:
    """test_split="none" (tuning runs that must never see test) trains and scores val only."""
    from losa_cache.sweep import SweepConfig
    from tests.sweep.conftest import SMALL

    res = run_sweep(
        SweepConfig(
            store=sweep_store,
            out=str(tmp_path / "s"),
            test_split="none",
            **{**SMALL, "speed_batches": 2},
        ),
        progress=False,
    )
    rows = json.loads((tmp_path / "s" / "results.json").read_text())
    rows = rows if isinstance(rows, list) else rows.get("results", rows.get("rows", []))
    assert res and rows and all(r.get("test_acc") is None for r in rows)
    assert all(r.get("val_acc") is not None for r in rows)


def test_every_sweep_field_is_a_flag_with_its_help() -> None:
    """Flags come from SweepConfig (list fields as comma-separated options); the fields a
    sweep shares with every run carry TrainConfig's own help (no copy to drift)."""
    from dataclasses import fields
    from typing import Any

    from losa_cache.sweep import SweepConfig
    from losa_cache.train import TrainConfig

    cmd: Any = typer.main.get_command(cli())
    params = {p.name: p for p in cmd.commands["sweep"].params}
    train_help = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
    for f in fields(SweepConfig):
        name = f.metadata.get("cli") or f.name
        assert name in params, name
        assert params[name].help.startswith(f.metadata["help"]), name  # + long choices
    for shared in ("batch_size", "seed", "eval_every", "shuffle_buffer", "model", "cache"):
        assert params[shared].help.startswith(train_help[shared]), shared


def test_bad_sweep_numbers_are_one_line_errors(sweep_store: str, tmp_path: Path) -> None:
    base = ["sweep", "--store", sweep_store, "--out", str(tmp_path / "x"), "--device", "cpu"]
    for args, says in (
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--seed", "-1"], "--seed must be an integer >= 0"),
        (["--rank", "4,0"], "--rank must be an integer >= 1, got 0"),
        (["--lr", "0.1,-1"], "--lr must be a number > 0, got -1.0"),
        (["--steps", "0"], "--steps must be an integer >= 1"),
        (["--speed-batches", "-1"], "--speed-batches must be an integer >= 0"),
    ):
        res = CliRunner().invoke(cli(), [*base, *args])
        assert res.exit_code == 2 and says in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1
