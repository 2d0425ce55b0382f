"""Live evaluation keeps its decoding workers: periodic evals of the same rows reuse one
persistent loader (no worker start-up per eval) and give the same numbers each time."""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest
import torch

from losa_cache.train import live, train
from losa_cache.train.engine import evaluate_runs
from losa_cache.train.live import LiveSource
from losa_cache.train.trainer import choose_inputs, make_run

LIVE = {
    "live": True,
    "store": None,
    "model": "vit_micro",
    "random_init": True,
    "init_seed": 0,
    "dataset": "demo",
    "limit": 64,
}
CPU = torch.device("cpu")


@pytest.fixture
def loaders(monkeypatch) -> list[Any]:
    """Every DataLoader live mode constructs."""
    made: list[Any] = []

    class Counting(live.DataLoader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(live, "DataLoader", Counting)
    return made


def _processes() -> set[int]:
    """Decoding workers: children of the forkserver (not it or the resource tracker)."""
    me = os.getpid()
    return {p.pid for p in psutil.Process(me).children(recursive=True) if p.ppid() != me}


def _val(cfg: Any) -> tuple[LiveSource, Any, Any]:
    source = LiveSource(cfg, CPU)
    run = make_run(cfg, source, CPU)
    inputs = choose_inputs(
        "none",
        source,
        CPU,
        [run.train_rows, run.eval_rows("val")],
        set(run.layers),
        cfg.workers,
        False,
    )
    return source, run, inputs


@pytest.mark.slow  # ~15 s where it starts the forkserver (torch preloaded)
def test_two_evaluations_reuse_one_loader_and_its_workers(make_cfg, loaders) -> None:
    source, run, inputs = _val(make_cfg("live", **LIVE, workers=1))
    try:
        before = _processes()
        first = evaluate_runs([run], "val", inputs)[id(run)]
        workers = _processes() - before
        second = evaluate_runs([run], "val", inputs)[id(run)]
        assert workers and _processes() - before == workers  # no new worker processes
        assert len(loaders) == 1 and loaders[0].persistent_workers
    finally:
        source.close()
    assert not _processes() & workers  # close() stopped them
    assert first == second and first["n"] == len(run.eval_rows("val")) == 64
    # the same numbers as a loader without workers (decoding in this process)
    source0, run0, inputs0 = _val(make_cfg("live0", **LIVE, workers=0))
    assert evaluate_runs([run0], "val", inputs0)[id(run0)] == first
    source0.close()


def test_periodic_live_eval_constructs_one_loader_per_split(make_cfg, loaders) -> None:
    """Train, val (evaluated at steps 2, 4 and 6) and test: three loaders in all."""
    m = train(make_cfg("run", **LIVE, workers=1, steps=6, eval_every=2), progress=False)
    assert [e["step"] for e in m["evals"]] == [2, 4, 6] and m["test_acc"] is not None
    assert len(loaders) == 3
