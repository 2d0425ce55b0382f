"""Smoke test of benchmarks/train.py: one tiny run end to end (store, I/O, subprocesses, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def bench(load_benchmark):
    """benchmarks/train.py, its results going to tmp_path instead of benchmarks/results."""
    return load_benchmark("train")


def test_train_benchmark_runs_and_reports(bench, micro_store: str, tmp_path: Path) -> None:
    # batch 1 only and two modes keep it to two worker subprocesses (each imports torch)
    # batch 1 only, three modes in two precisions: six worker subprocesses (each imports torch)
    tiny = (
        "--modes plain,stream,live --batch-size 1 --warmup 1 --batches 2 --workers 0 "
        "--threads 1 --peak-size 64"
    )
    io_args = ["--io-seconds", "0", "--io-min-mb", "1"]  # tiles the micro store to >= 1 MB
    payload = bench.main(["--store", micro_store, *tiny.split(), *io_args])
    runs = {(r["mode"], r["amp"], r["batch_size"]): r for r in payload["runs"]}
    assert set(runs) == {(m, a, 1) for m in ("plain", "stream", "live") for a in ("bf16", "fp32")}
    for r in runs.values():
        assert r["img_s"] > 0 and r["steps"] == 3 and r["peak_bytes"] > 0
    assert runs["stream", "fp32", 1]["reader_bytes"] > 0
    assert runs["live", "fp32", 1]["reader_bytes"] == 0
    ratios = {(r["mode"], r["amp"]): r for r in payload["ratios"]}
    assert set(ratios) == {
        (m, a) for m in ("plain/live", "stream/live", "stream/plain") for a in ("bf16", "fp32")
    }
    assert all(r["img_s_x_bs1"] > 0 for r in ratios.values())
    roof = payload["roofline"]
    assert roof["train_flops_per_image"] > 0 and roof["feature_bytes_per_image"] > 0
    assert roof["bf16_gflop_s"] > 0 and roof["fp32_gflop_s"] > 0 and roof["copy_gb_s"] > 0
    assert len(roof["rows"]) == len(runs) and all(r["gflop_s"] > 0 for r in roof["rows"])
    io = payload["io"]
    assert io["files"] > 0 and io["warm"]["raw_mb_s"] > 0 and io["warm"]["efficiency"] > 0
    assert io["file_bytes"] >= 1e6 and io["store"] != micro_store
    assert 0 < io["warm"]["raw_ram_mb_s"] <= io["warm"]["raw_mb_s"]
    assert io["warm"]["reader"]["logical_bytes"] > 0
    assert io["warm"]["reader"]["verified"] and not io["warm"]["reader_unverified"]["verified"]
    assert io["warm"]["reader_unverified"]["logical_bytes"] > 0 and "verify_cost" in io["warm"]
    checks = {(c["ratio"], c["amp"], c["measure"]): c["pass"] for c in payload["targets"]}
    assert {("stream/live", a, "img_s_x_bs1") for a in ("bf16", "fp32")} <= set(checks)
    assert set(checks.values()) <= {"PASS", "FAIL"}
    (saved,) = tmp_path.glob("train-*.json")
    doc = json.loads(saved.read_text())
    assert doc["benchmark"] == "train" and doc["runs"] and "versions" in doc


def test_tiled_store_repeats_the_rows_exactly(bench, micro_store: str, tmp_path: Path) -> None:
    """The I/O timing store: the source's rows N times over, every row train, verifiable."""
    import numpy as np

    from losa_cache.store import open_store
    from losa_cache.store.writer import verify_shards

    src = open_store(micro_store)
    tiled = open_store(bench.tile_store(micro_store, str(tmp_path / "t.zarr"), 3))
    n = src.num_images
    assert tiled.num_images == 3 * n and tiled.complete
    assert tiled.split_rows("train").tolist() == list(range(3 * n))
    for layer in src.layers:
        expect = np.tile(src.features(layer)[:], (3, 1, 1))
        np.testing.assert_array_equal(tiled.features(layer)[:], expect)
    np.testing.assert_array_equal(tiled.labels(), np.tile(src.labels(), 3))
    assert verify_shards(tiled) == []  # the writer's checksums hold


def test_targets_are_pass_fail_rows_per_precision(bench) -> None:
    import torch

    rat = [{"mode": "stream/live", "amp": "bf16", "img_s_x_bs32": 30.0, "mem_pct_bs1": 20.0,
            "mem_pct_bs32": 120.0},
           {"mode": "stream/plain", "amp": "bf16", "img_s_x_bs32": 0.8},
           {"mode": "stream/live", "amp": "fp32", "img_s_x_bs32": 24.0}]  # fmt: skip
    io = {"warm": {"efficiency": 0.75}}
    rows = bench.target_checks(rat, io, 32, torch.device("cpu"))
    got = {(r["ratio"], r["amp"], r["measure"]): (r["target"], r["pass"]) for r in rows}
    assert got == {
        ("stream/live", "bf16", "img_s_x_bs32"): (">= 25x", "PASS"),
        ("stream/live", "bf16", "mem_pct_bs1"): ("<= 25%", "PASS"),
        ("stream/live", "bf16", "mem_pct_bs32"): ("<= 100%", "FAIL"),
        ("stream/plain", "bf16", "img_s_x_bs32"): (">= 0.9x", "FAIL"),
        ("stream/live", "fp32", "img_s_x_bs32"): (">= 25x", "FAIL"),
        ("reader/raw (warm)", "", "efficiency"): (">= 70%", "PASS"),
    }
