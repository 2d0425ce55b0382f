"""Results on stdout, progress on stderr: ``--json`` stdout parses as one JSON document for
every command, while stderr still shows the bar, notes and one line per evaluation;
``--quiet`` silences stderr."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app

runner = CliRunner()

TRAIN = [
    "train",
    "--method",
    "losa",
    "--rank",
    "4",
    "--layers",
    "evenly:2",
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--log-every",
    "2",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--workers",
    "0",
]
EVAL_LINE = re.compile(r"step (\d+)/6  val acc [\d.]+%  val loss [\d.]+ \(best [\d.]+% at step")


def _ok(args: list[str]) -> tuple[str, str]:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return res.stdout, res.stderr


@pytest.fixture(scope="module")
def trained(micro_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``train --json`` run: its stdout (JSON) and stderr (progress)."""
    out = tmp_path_factory.mktemp("progress") / "run"
    stdout, stderr = _ok([*TRAIN, "--store", micro_store, "--out", str(out), "--json"])
    return {"metrics": json.loads(stdout), "stderr": stderr, "out": out}


def test_train_json_keeps_stdout_json_and_shows_progress_on_stderr(trained: dict) -> None:
    m, err = trained["metrics"], trained["stderr"]
    assert m["complete"] and m["step"] == 6
    steps = [int(s) for s in EVAL_LINE.findall(err)]
    assert steps == [e["step"] for e in m["evals"]] == [3, 6]  # one line per evaluation
    assert "cache: " in err and "allocator: " in err  # notes
    assert "train:" in err and "loss=" in err and "lr=" in err and "val=" in err  # the bar


def test_human_output_has_results_on_stdout_and_notes_on_stderr(
    micro_store: str, tmp_path: Path
) -> None:
    stdout, stderr = _ok([*TRAIN, "--store", micro_store, "--out", str(tmp_path / "r")])
    assert "test acc" in stdout and "val acc     best" in stdout
    assert "cache: " not in stdout and "allocator: " not in stdout
    assert "cache: " in stderr and len(EVAL_LINE.findall(stderr)) == 2


def test_quiet_silences_progress(micro_store: str, tmp_path: Path) -> None:
    stdout, stderr = _ok(
        [*TRAIN, "--store", micro_store, "--out", str(tmp_path / "q"), "--json", "--quiet"]
    )
    assert json.loads(stdout)["complete"] and stderr == ""


def test_sweep_json_progress_and_no_costs(micro_store: str, tmp_path: Path) -> None:
    args = [
        "sweep",
        "--store",
        micro_store,
        "--method",
        "losa,linear",
        "--rank",
        "4",
        "--layers",
        "evenly:2",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--speed-batches",
        "1",
        "--json",
    ]
    stdout, stderr = _ok([*args, "--out", str(tmp_path / "s")])
    rows = json.loads(stdout)["results"]
    assert all(r["train_img_s"] for r in rows)
    assert "costs: measuring 2 distinct config(s)" in stderr and "--no-costs" in stderr
    assert re.search(r"costs: about \d+ s more for the other 1 config", stderr)
    for r in rows:  # each run's evaluations, named
        assert len(re.findall(rf"{re.escape(r['run'])}: step \d+/4  val acc", stderr)) == 2
    stdout, stderr = _ok([*args, "--out", str(tmp_path / "n"), "--no-costs"])
    rows = json.loads(stdout)["results"]
    assert all(r["train_img_s"] is None and r["infer_img_s_b1"] is None for r in rows)
    assert "costs:" not in stderr and all(r["val_acc"] is not None for r in rows)


def test_every_json_command_prints_only_json(
    micro_store: str, trained: dict, tmp_path: Path
) -> None:
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    adapter = str(trained["out"])
    store = str(tmp_path / "e.zarr")
    commands = [
        ["models", "--json"],
        ["plan", "--model", "vit_micro", "--dataset", "demo", "--json"],
        [
            "extract",
            "--model",
            "vit_micro",
            "--random-init",
            "--dataset",
            "demo",
            "--limit",
            "8",
            "--store",
            store,
            "--workers",
            "0",
            "--json",
        ],
        ["info", micro_store, "--json"],
        ["tasks", "list", micro_store, "--json"],
        ["verify", micro_store, "--json"],
        ["eval", "--adapter", adapter, "--store", micro_store, "--json"],
        [
            "predict",
            str(image),
            "--adapter",
            adapter,
            "--model",
            "vit_micro",
            "--random-init",
            "--json",
        ],
    ]
    for args in commands:
        stdout, _ = _ok(args)
        json.loads(stdout)  # nothing but the document


def test_without_out_every_run_gets_a_fresh_folder(
    micro_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default --out is a new runs/<kind>-<time> folder: a second run (same second
    included) neither refuses nor overwrites the first; --resume must name its folder."""
    monkeypatch.chdir(tmp_path)
    args = [*TRAIN, "--store", micro_store, "--json", "--quiet"]
    first, second = (json.loads(_ok(args)[0])["out"] for _ in range(2))
    assert first != second
    for out in (first, second):
        assert re.fullmatch(r"runs/train-\d{8}-\d{6}(-\d+)?", out), out
        assert (tmp_path / out / "adapter.json").is_file()
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 2 and "--resume needs --out" in res.stderr
    sweep = [
        "sweep",
        "--store",
        micro_store,
        "--method",
        "linear",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-costs",
        "--json",
        "--quiet",
    ]
    out = json.loads(_ok(sweep)[0])["summary"]["out"]
    assert re.fullmatch(r"runs/sweep-\d{8}-\d{6}(-\d+)?", out)
    assert (tmp_path / out / "results.json").is_file()
