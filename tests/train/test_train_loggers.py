"""--log: TensorBoard event files hold metrics.jsonl's values; Python loggers get its rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from losa_cache.sweep import SweepConfig, run_sweep
from losa_cache.train import loggers as L
from losa_cache.train import train


def jsonl(out: str | Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def events(out: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run folder's event files: tag -> [(step, value)]."""
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def expected(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard stores it: kind/name tags, float32 values."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in L.scalars(row).items():
            out.setdefault(tag, []).append((row["step"], float(np.float32(value))))
    return out


def test_tensorboard_events_equal_metrics_jsonl(make_cfg) -> None:
    cfg = make_cfg(log="tensorboard")
    train(cfg, progress=False)
    rows = jsonl(cfg.out)
    got = events(cfg.out)
    assert {"train/loss", "train/lr", "train/img_s", "train/memory_bytes", "eval/acc",
            "eval/loss", "test/acc", "test/loss"} <= set(got)  # fmt: skip
    assert all(v > 0 for _, v in got["train/memory_bytes"])
    assert got == expected(rows)
    assert len(got["train/loss"]) == 6 and [s for s, _ in got["eval/acc"]] == [3, 6]


class CrashAfterStep5(L.TensorBoardLogger):
    """TensorBoard, then a crash once step 5 is logged (after checkpoint 3)."""

    def __call__(self, row: dict[str, Any]) -> None:
        super().__call__(row)
        if row["step"] == 5:
            raise RuntimeError("crash for the test")


def test_resumed_run_events_equal_its_metrics_jsonl(make_cfg) -> None:
    """Steps after the checkpoint are purged from the events as from metrics.jsonl."""
    L.register_logger("crash_for_test", CrashAfterStep5)
    try:
        first = make_cfg(log="crash_for_test", checkpoint_every=3)
        with pytest.raises(RuntimeError, match="crash for the test"):
            train(first, progress=False)
    finally:
        del L.LOGGERS["crash_for_test"]
    assert max(e for e, _ in events(first.out)["train/loss"]) == 5  # 4, 5: after checkpoint 3
    train(make_cfg(log="tensorboard", resume=True, checkpoint_every=3), progress=False)
    rows = jsonl(first.out)  # steps 4, 5 dropped on resume and written again
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert events(first.out) == expected(rows)


def test_registered_logger_gets_every_row_and_is_closed(make_cfg) -> None:
    seen: list[tuple[Path, dict]] = []
    closed: list[Path] = []

    class Rows:
        def __init__(self, run: L.RunInfo) -> None:
            self.run = run

        def __call__(self, row: dict[str, Any]) -> None:
            seen.append((self.run.out, row))

        def close(self) -> None:
            closed.append(self.run.out)

    L.register_logger("rows_for_test", Rows)
    try:
        cfg = make_cfg(log="rows_for_test")
        train(cfg, progress=False)
        with pytest.raises(ValueError, match="exists already"):
            L.register_logger("rows_for_test", Rows)
    finally:
        del L.LOGGERS["rows_for_test"]
    assert [row for _, row in seen] == jsonl(cfg.out)
    assert {out for out, _ in seen} == {Path(cfg.out)} and closed == [Path(cfg.out)]


def test_sweep_writes_events_per_run(sweep_setup: dict[str, Any]) -> None:
    run_sweep(SweepConfig(**sweep_setup, log="tensorboard"), progress=False)
    runs = [p.parent for p in Path(sweep_setup["out"]).glob("runs/*/*/metrics.jsonl")]
    assert len(runs) == 2
    for out in runs:
        assert events(out) == expected(jsonl(out)) and events(out)["train/loss"]


@pytest.fixture
def sweep_setup(micro_store: str, tmp_path: Path) -> dict[str, Any]:
    return dict(store=micro_store, out=str(tmp_path / "sweep"), method=["linear", "losa"],
                rank=[4], layers=["evenly:2"], steps=4, batch_size=16, eval_every=2,
                log_every=1, workers=1, device="cpu", amp="fp32", speed_batches=0,
                live_metrics=False)  # fmt: skip


def test_missing_tensorboard_is_one_line_naming_the_extra(make_cfg, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ValueError, match=r"pip install 'losa-cache\[tb\]'"):
        train(make_cfg(log="tensorboard"), progress=False)


def test_unknown_logger_is_one_line_at_the_start(make_cfg) -> None:
    """Refused when the run opens, not when a config loads: a checkpoint or adapter
    saved with a logger registered in another process must still load."""
    cfg = make_cfg(log="wandb")
    with pytest.raises(ValueError, match=r"unknown --log 'wandb'; choose one of \['none', "):
        train(cfg, progress=False)
