"""The VTAB-1k protocol of the live baselines (lr search -> final run -> test), every run
through the engine, on the tiny generated tasks of tests/accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losa_cache.baselines.protocol import run_baseline, task_dirs
from tests.accuracy.conftest import build_tiny, shared_data, tiny_tasks  # noqa: F401

torch.set_num_threads(1)

SPEC = {"model": "vit_micro", "random_init": True}


def test_lr_search_then_final_run_then_test(tiny_tasks: Path, tmp_path: Path) -> None:  # noqa: F811
    out = run_baseline(
        "vpt",
        tiny_tasks / "location",
        SPEC,
        lrs=(1e-3, 3e-3),
        steps=2,
        batch_size=8,
        out=tmp_path,
        prompt_tokens=2,
    )
    assert out["task"] == "location" and out["best_lr"] in (1e-3, 3e-3)
    assert out["val_acc_best"] == max(out["val_acc"].values())
    assert 0.0 <= out["test_acc"] <= 100.0 and out["learned_params"] == 2 * 4 * 32
    assert out["memory_mb_bs1"] >= 0 and out["memory_kind"] != "not measured"
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["splits"] == {"train": "train800val200", "val": None, "test": "test"}
    assert 100.0 * final["test_acc"] == out["test_acc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "lr0.001", "lr0.003", "memory"]
    assert len(task_dirs(str(tiny_tasks))) == 4


def test_bad_protocol_arguments_are_refused(tiny_tasks: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="final must be"):
        run_baseline("full", tiny_tasks / "count", SPEC, final="test")
    with pytest.raises(ValueError, match="unknown live baseline 'prompt'"):
        run_baseline("prompt", tiny_tasks / "count", SPEC)
