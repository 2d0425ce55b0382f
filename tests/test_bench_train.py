"""Smoke test of benchmarks/train.py: one tiny run end to end (store, I/O, subprocesses, JSON)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The benchmark module, its results going to tmp_path instead of benchmarks/results."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_train", BENCH / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path)
    return module


def test_train_benchmark_runs_and_reports(bench, micro_store: str, tmp_path: Path) -> None:
    # batch 1 only and two modes keep it to two worker subprocesses (each imports torch)
    tiny = "--modes stream,live --batch-size 1 --warmup 1 --batches 2 --workers 0 --threads 1"
    payload = bench.main(["--store", micro_store, *tiny.split(), "--io-seconds", "0"])
    runs = {(r["mode"], r["batch_size"]): r for r in payload["runs"]}
    assert set(runs) == {("stream", 1), ("live", 1)}
    for r in runs.values():
        assert r["img_s"] > 0 and r["steps"] == 3 and r["peak_bytes"] > 0
    assert runs["stream", 1]["reader_bytes"] > 0 and runs["live", 1]["reader_bytes"] == 0
    (ratio,) = payload["ratios"]
    assert ratio["mode"] == "stream/live" and ratio["img_s_x_bs1"] > 0
    io = payload["io"]
    assert io["files"] > 0 and io["warm"]["raw_mb_s"] > 0 and io["warm"]["efficiency"] > 0
    assert io["warm"]["reader"]["logical_bytes"] > 0
    (saved,) = tmp_path.glob("train-*.json")
    doc = json.loads(saved.read_text())
    assert doc["benchmark"] == "train" and doc["runs"] and "versions" in doc
