"""A store without val says so (train, sweep, report); one with --split validates and tests;
a labelling added later keeps the store's splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import open_store

FAST = ["--steps", "4", "--batch-size", "8", "--device", "cpu", "--workers", "0"]
NOTE = "no validation split"


def invoke(*args: str):
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res


def test_train_without_val_says_so_once(plain_photo_store: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = invoke("train", "--store", plain_photo_store, "--out", str(out), "--method", "linear",
                 *FAST)  # fmt: skip
    assert res.output.count(NOTE) == 1, res.output
    assert "--split val=0.1" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_acc"] is None and metrics["test_acc"] is None
    assert sum(NOTE in n for n in metrics["notes"]) == 1
    quiet = invoke("train", "--store", plain_photo_store, "--out", str(tmp_path / "none"),
                   "--method", "linear", "--val-split", "none", *FAST)  # fmt: skip
    assert NOTE not in quiet.output  # asked for no validation: nothing to say


def test_train_on_carved_splits_validates_and_tests(photo_store: str, tmp_path: Path) -> None:
    res = invoke("train", "--store", photo_store, "--out", str(tmp_path / "run"), "--method",
                 "linear", "--json", *FAST)  # fmt: skip
    assert NOTE not in res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_val_acc"] is not None and metrics["test_acc"] is not None


def test_sweep_names_no_best_run_and_report_says_why(
    plain_photo_store: str, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    res = invoke("sweep", "--store", plain_photo_store, "--out", str(out), "--method", "linear",
                 "--speed-batches", "0", "--no-live-metrics", *FAST)  # fmt: skip
    assert res.output.count(NOTE) == 1, res.output
    assert "no best run is named" in res.output and "--split val=0.1" in res.output
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["best"] == {}
    assert not (out / "best").exists() or not any((out / "best").iterdir())
    rep = invoke("report", str(out))
    assert "wrote 0 plots" in rep.output
    task = open_store(plain_photo_store).default_task
    assert f"nothing drawn for task {task!r}: no run has a val or test accuracy" in rep.output
    assert "--split val=0.1,test=0.1" in rep.output


def test_tasks_add_keeps_the_carved_splits(photo_store: str, tmp_path: Path) -> None:
    store_path = tmp_path / "s.zarr"
    shutil.copytree(photo_store, store_path)
    before = open_store(store_path)
    splits = {k: v.tolist() for k, v in before.splits.items()}
    sources = before.sources
    labels = tmp_path / "parity.txt"  # a second labelling: even/odd row
    labels.write_text("".join(f"{s} {'even' if i % 2 == 0 else 'odd'}\n"
                              for i, s in enumerate(sources)))  # fmt: skip
    invoke("tasks", "add", str(store_path), "--name", "parity", "--labels", str(labels))
    after = open_store(store_path)
    assert {k: v.tolist() for k, v in after.splits.items()} == splits
    assert after.manifest.extract_config["split"] == "val=0.25,test=5"
    val = after.split_rows("val")
    assert np.array_equal(after.labels("parity")[val], val % 2)
    res = invoke("train", "--store", str(store_path), "--task", "parity", "--out",
                 str(tmp_path / "run"), "--method", "linear", *FAST)  # fmt: skip
    assert NOTE not in res.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_val_acc"] is not None and metrics["test_acc"] is not None


def test_mist_without_val_is_refused_before_training(plain_photo_store: str,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """MIST chooses k on val: without val it stops at once, with fixes that work."""
    args = ["train", "--store", plain_photo_store, "--method", "mist", *FAST]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert res.exit_code != 0 and "but there is no validation split" in res.output
    assert "--split val=0.1" in res.output and not (tmp_path / "refused").exists()
    assert "--gather last" in res.output  # a blocks-only store feeds no G_k: b_L
    invoke(*args, "--gather", "last", "--out", str(tmp_path / "last"))
