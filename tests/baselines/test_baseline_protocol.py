"""The VTAB-1k protocol of the live baselines (lr search -> final run -> test), every run
through the engine, on the tiny generated tasks of tests/accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losa_cache.pipelines.baseline_protocol import extend_grid, run_baseline, task_dirs
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
        extend=1,
    )
    assert out["task"] == "location" and out["best_lr"] in out["lrs"]
    assert out["val_acc_best"] == max(out["val_acc"].values())
    tried = sorted(out["lrs"])  # the grid, plus one lr past the edge the best sat at
    assert tried[:2] == [1e-3, 3e-3] or tried[1:] == [1e-3, 3e-3] or len(tried) == 2
    assert 0.0 <= out["test_acc"] <= 100.0 and out["learned_params"] == 2 * 4 * 32
    assert out["memory_mb_bs1"] >= 0 and out["memory_kind"] != "not measured"
    final = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert final["splits"] == {"train": "train800val200", "val": None, "test": "test"}
    assert 100.0 * final["test_acc"] == out["test_acc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["final", *(f"lr{lr:g}" for lr in out["lrs"])]
    )
    assert len(task_dirs(str(tiny_tasks))) == 4


def test_training_memory_counts_weights_gradients_and_optimizer_state(
    tiny_tasks: Path,  # noqa: F811
) -> None:
    """Every baseline's batch-1 memory holds its backbone copy's fp32 weights; full
    fine-tuning adds a gradient and two AdamW moments per weight, so it exceeds BitFit's
    (which trains the biases alone). The run's RSS growth got both below the weights."""
    from losa_cache.backbone import create_backbone
    from losa_cache.pipelines.baseline_protocol import _config, train_memory

    net = create_backbone("vit_micro", random_init=True).model
    weights = sum(p.numel() * 4 for p in net.parameters())
    mem = {
        m: train_memory(_config(m, tiny_tasks / "digits", SPEC, Path("unused"), batch_size=1))[0]
        for m in ("full", "bitfit")
    }
    assert mem["bitfit"] > weights
    assert mem["full"] > mem["bitfit"] + 2 * weights  # + grads + AdamW's two moments


def test_bad_protocol_arguments_are_refused(tiny_tasks: Path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="final must be"):
        run_baseline("full", tiny_tasks / "count", SPEC, final="test")
    with pytest.raises(ValueError, match="unknown live baseline 'prompt'"):
        run_baseline("prompt", tiny_tasks / "count", SPEC)


def _fake(peak: float):
    """A scorer peaking at ``peak`` (log-lr distance), recording what it was asked."""
    import math

    asked: list[float] = []

    def score(lr: float) -> float:
        asked.append(lr)
        return -abs(math.log10(lr) - math.log10(peak))

    return score, asked


@pytest.mark.parametrize(
    ("peak", "best", "asked"),
    [
        (1e-2, 1e-2, []),  # inside the grid: no extension
        (1.0, 1.0, [1.0, 10.0]),  # top edge: up while better, one past the peak
        (1e-5, 1e-5, [1e-4, 1e-5, 1e-6]),  # bottom edge: down
        (1e5, 100.0, [1.0, 10.0, 100.0]),  # keeps climbing: capped at max_extra = 3
    ],
)
def test_extend_grid_follows_the_edge(peak: float, best: float, asked: list[float]) -> None:
    score, seen = _fake(peak)
    scores = {lr: score(lr) for lr in (1e-3, 1e-2, 1e-1)}
    seen.clear()
    got = extend_grid(score, scores, max_extra=3, ratio=10.0)
    assert got == pytest.approx(best) and seen == pytest.approx(asked)
    assert len(scores) == 3 + len(asked)


def test_extend_grid_stops_on_a_tie_and_uses_the_grid_spacing() -> None:
    seen: list[float] = []
    flat = lambda lr: seen.append(lr) or 1.0
    assert extend_grid(flat, {1e-3: 1.0, 3e-3: 1.0}) == 1e-3  # tie: the smaller
    assert seen == [pytest.approx(1e-3 / 3)]  # one step (the grid's x3) and no further
    with pytest.raises(ValueError, match="at least one"):
        extend_grid(flat, {})
