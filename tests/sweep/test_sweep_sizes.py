"""Every option that takes bytes reads sizes with the one parser (losa_cache.checks): train
and sweep give ``--max-memory`` the same meaning (it used to fail on sweep, issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import losa_cache.sweep
import losa_cache.train
from losa_cache.cli.main import app


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The config each command would run, the run itself skipped."""
    got: dict[str, Any] = {}

    def capture(kind: str) -> Any:
        def run(cfg: Any, **_: Any) -> dict[str, Any]:
            got[kind] = cfg
            raise SystemExit(0)

        return run

    monkeypatch.setattr(losa_cache.sweep, "run_sweep", capture("sweep"))
    monkeypatch.setattr(losa_cache.train, "train", capture("train"))
    return got


@pytest.mark.parametrize(("text", "mib"), [("300MB", 286), ("2GiB", 2048), ("300", 300)])
def test_max_memory_means_the_same_in_train_and_sweep(
    sweep_store: str, tmp_path: Path, seen: dict[str, Any], text: str, mib: int
) -> None:
    common = ["--store", sweep_store, "--max-memory", text]
    for cmd in ("train", "sweep"):
        res = CliRunner().invoke(app, [cmd, *common, "--out", str(tmp_path / cmd)])
        assert res.exit_code == 0, res.output
    assert seen["train"].max_memory == seen["sweep"].max_memory == mib


def test_memory_budget_reads_binary_units(
    sweep_store: str, tmp_path: Path, seen: dict[str, Any]
) -> None:
    res = CliRunner().invoke(
        app, ["sweep", "--store", sweep_store, "--out", str(tmp_path), "--memory-budget", "2GiB"]
    )
    assert res.exit_code == 0, res.output
    assert seen["sweep"].memory_budget == 2 * 2**30


@pytest.mark.parametrize("cmd", ["train", "sweep"])
def test_a_bad_size_is_one_line_naming_the_units(
    sweep_store: str, tmp_path: Path, seen: dict[str, Any], cmd: str
) -> None:
    res = CliRunner().invoke(
        app, [cmd, "--store", sweep_store, "--out", str(tmp_path), "--max-memory", "lots"]
    )
    assert res.exit_code == 2 and "e.g. 500GB" in res.output and cmd not in seen
