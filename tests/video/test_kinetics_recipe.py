"""pipelines/kinetics.py: the paper's video recipe, its tiny run, and kinetics:ROOT."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from losa_cache.pipelines import kinetics
from losa_cache.train import TrainConfig
from tests.video._videos import write_video


def test_paper_recipe_is_the_video_table() -> None:
    """arXiv 2402.02887's video hyperparameters (and Sec. 4.3's 32 frames)."""
    r = kinetics.PAPER
    assert (r.batch_size, r.lr, r.momentum, r.warmup_epochs, r.epochs, r.rank, r.frames) == (
        64, 0.04, 0.9, 2.5, 30.0, 64, 32)  # fmt: skip
    cfg = TrainConfig(store="s", optimizer="sgd", lr=r.lr_per_512())
    assert cfg.base_lr(64) == pytest.approx(0.04)  # the table's lr is the peak at batch 64


def test_runlocal_rows_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "k"
    doc = kinetics.main(["--runlocal", "--out", str(out), "--quiet"])
    assert set(doc["rows"]) == {"losa", "linear", "full"}
    saved = json.loads((out / "kinetics_results.json").read_text())
    assert saved["rows"].keys() == doc["rows"].keys()
    r = kinetics.RUNLOCAL
    train_rows = 16  # video_tasks.SMALL
    for name, row in doc["rows"].items():
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        plan = metrics["plan"]
        assert plan["lr"] == pytest.approx(0.04) and plan["batch_size"] == r.batch_size
        assert plan["warmup_steps"] == math.ceil(r.warmup_epochs * train_rows / r.batch_size)
        assert plan["epochs"] == pytest.approx(r.epochs)
        # a fixed recipe: nothing selected, the final model scored once on val
        assert metrics["evals"] == [] and metrics["splits"]["test"] == "val"
        assert row["val_acc"] == metrics["test_acc"] and 0 <= row["val_acc"] <= 1
        assert metrics["complete"] and metrics["adapter"]
    assert doc["rows"]["full"]["live"] and not doc["rows"]["losa"]["live"]
    losa = json.loads((out / "runs" / "losa" / "adapter.json").read_text())
    assert json.dumps(losa).count('"temporal": true') >= 1  # Eq. 6's g_temporal
    assert doc["rows"]["full"]["learned_params"] > doc["rows"]["losa"]["learned_params"] > 0


def _kinetics_root(root: Path) -> Path:
    root.mkdir()
    rows = [(lab, f"v{i}", 0, 10, split) for split, n in (("train", 4), ("validate", 2))
            for i, lab in zip(range(n), ("abseiling", "zumba") * n, strict=False)]  # fmt: skip
    rows = [(lab, f"{split}{vid}", a, b, split) for lab, vid, a, b, split in rows]
    for stem in ("train", "validate"):
        with (root / f"{stem}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows([r for r in rows if r[4] == stem])
    for _label, vid, start, end, split in rows:
        write_video(root / split / f"{vid}_{start:06d}_{end:06d}.mp4", frames=4)
    return root


def test_kinetics_root_runs_the_recipe(tmp_path: Path) -> None:
    root = _kinetics_root(tmp_path / "k400")
    args = ["--root", str(root), "--model", "vivit_test", "--random-init", "--out",
            str(tmp_path / "o"), "--rows", "losa", "--epochs", "1", "--batch-size", "2",
            "--workers", "0", "--quiet"]  # fmt: skip
    plan = kinetics.main([*args, "--dry-run"])
    assert plan["dataset"] == f"kinetics:{root}" and not (tmp_path / "o").exists()
    doc = kinetics.main(args)
    m = json.loads((tmp_path / "o" / "runs" / "losa" / "metrics.json").read_text())
    assert m["splits"]["test"] == "val" and m["plan"]["batch_size"] == 2
    assert m["plan"]["lr"] == pytest.approx(0.04 * 2 / 64)  # lr / batch kept from the table
    cfg = kinetics.train_config(kinetics.parse_args(args), "losa", doc["dataset"], 4)
    assert cfg.warmup_steps == math.ceil(2.5 * 4 / 2)  # 2.5 epochs (the plan caps it at steps)
    assert doc["recipe"]["frames"] == 32


def test_needs_root_or_runlocal() -> None:
    with pytest.raises(SystemExit):
        kinetics.parse_args(["--out", "x"])
