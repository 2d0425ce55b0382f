"""The train command through typer's CliRunner: JSON output, files written, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from losa_cache.cli.train_cmds import train

app = typer.Typer()
app.command("train")(train)
app.command("noop")(lambda: None)  # two commands: `train` stays a subcommand
runner = CliRunner()

ARGS = ["train", "--rank", "4", "--layers", "evenly:2", "--steps", "4", "--batch-size", "16",
        "--device", "cpu", "--workers", "1"]


def test_train_command_json(micro_store: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", str(out), "--json",
                              "--optimizer", "adamw", "--label-smoothing", "0.1"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["complete"] and m["step"] == 4 and m["plan"]["batch_size"] == 16
    assert (out / "adapter.json").is_file() and (out / "metrics.json").is_file()


def test_train_command_human_summary_and_resume(micro_store: str, tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", out, "--stop-at", "2"])
    assert res.exit_code == 0, res.output
    assert "rerun with --resume" in res.stdout
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", out, "--resume"])
    assert res.exit_code == 0, res.output
    assert "test acc" in res.stdout and "adapter" in res.stdout


def test_train_command_errors_are_one_line(micro_store: str, tmp_path: Path) -> None:
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", str(tmp_path / "x"),
                              "--task", "nope"])
    assert res.exit_code == 2
    assert "unknown task 'nope'" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--rank", "0"])
    assert res.exit_code == 2 and "rank must be" in res.stderr


def test_docstring_has_an_example() -> None:
    assert "Example: losa-cache train" in (train.__doc__ or "")
