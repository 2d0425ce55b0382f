"""Smoke test of benchmarks/int8.py with tiny settings: the table rows and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_int8_benchmark_reports_reader_throughput_of_both_dtypes(
    tmp_path: Path, load_benchmark
) -> None:
    bench = load_benchmark("int8")
    bench.main(
        [
            "--images",
            "2",
            "--models",
            "demo",
            "--reader-images",
            "8",
            "--reader-epochs",
            "1",
            "--reader-batch",
            "4",
            "--workdir",
            str(tmp_path),
        ]
    )
    (saved,) = tmp_path.glob("int8-*.json")
    doc = json.loads(saved.read_text())
    reader = {r["store_dtype"]: r for r in doc["reader"]}
    assert set(reader) == {"float16", "int8"}
    for r in reader.values():
        assert r["images"] == 24 and r["reader_img_s"] > 0 and r["direct_reads"]
    assert doc["reader_settings"]["images_per_split"] == 8
    assert {r["tap"] for r in doc["rows"]} == {"embed", "blocks", "attn", "mlp", "sum"}
    assert torch.is_grad_enabled()  # the process stays usable for training
