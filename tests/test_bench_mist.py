"""Smoke test of benchmarks/mist.py with tiny settings (subprocesses, adapters, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_mist_benchmark_runs_and_reports(tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("mist")
    payload = bench.main(
        [
            "--model",
            "vit_micro",
            "--images",
            "16",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--methods",
            "mist,losa_r16",
        ]
    )
    runs = {r["method"]: r for r in payload["runs"]}
    assert set(runs) == {"mist", "losa_r16"}
    for r in runs.values():
        assert r["train_peak_mb"] > 0 and r["infer_peak_mb"] > 0 and r["train_img_s"] > 0
        assert r["edge_gmacs"] > 0
    # vit_micro: T 17, D 32; mist reads one map (G_4, the sum:4 tap), losa every block (4)
    assert runs["mist"]["reads"] == ["sum:4"] and runs["losa_r16"]["reads"] == [0, 1, 2, 3]
    assert runs["mist"]["transfer"]["maps"] == 1 and runs["losa_r16"]["transfer"]["maps"] == 4
    assert runs["mist"]["transfer"]["fp32_mib"] == pytest.approx(17 * 32 * 4 / 2**20)
    (saved,) = tmp_path.glob("mist-*.json")
    assert json.loads(saved.read_text())["runs"] == json.loads(json.dumps(payload["runs"]))
