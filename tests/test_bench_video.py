"""Smoke test of benchmarks/video.py: tiny ViViT, every method, and the --max-gb guard."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def bench(load_benchmark):
    """benchmarks/video.py, its results going to tmp_path instead of benchmarks/results."""
    return load_benchmark("video")


@pytest.mark.slow
def test_video_benchmark_measures_every_method_and_stops_at_the_memory_cap(
    bench, tmp_path: Path
) -> None:
    tiny = ["--models", "vivit_test", "--steps", "1", "--threads", "1", "--max-gb", "2"]
    payload = bench.main([*tiny, "--frames", "4"])
    runs = {r["method"]: r for r in payload["runs"]}
    assert set(runs) == set(bench.METHODS)
    for r in runs.values():
        assert r["ok"] and r["clips_s"] > 0 and r["peak_bytes_batch1"] >= 0, r
    assert runs["live_full"]["model_bytes"] > runs["live_losa"]["model_bytes"]  # + the ViViT
    assert runs["live_losa"]["model_bytes"] == runs["cached_losa"]["model_bytes"]
    assert payload["largest_that_ran"]["cached_losa"] == "vivit_test @ 4 frames (33 tokens)"
    (saved,) = tmp_path.glob("video-*.json")
    assert '"versions"' in saved.read_text() and '"date"' in saved.read_text()
    # a cap no model fits under: the first size fails inside the worker, larger ones never run
    capped = bench.main([*tiny[:-1], "0.002", "--frames", "4,8", "--methods", "live_full"])
    (row,) = capped["runs"]
    assert not row["ok"] and row["frames"] == 4 and row["error"]
    assert capped["largest_that_ran"] == {}
