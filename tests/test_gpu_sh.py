"""benchmarks/gpu.sh on CPU: the wheels it would carry, its deadline, and a dry run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.sh"
sys.path.insert(0, str(REPO / "benchmarks"))
import _gpu  # noqa: E402  (benchmarks/ is no package)


def gpu_sh(*args: str, tmp: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    full = {
        **{k: v for k, v in os.environ.items() if k != "OUT"},
        "PYTHON": sys.executable,
        "LOSA_BENCH_RESULTS": str(tmp / "results"),
        "TMPDIR": str(tmp),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=timeout
    )


def summary(tmp: Path) -> dict:
    (path,) = (tmp / "results").glob("gpu-*.json")
    return json.loads(path.read_text())


def test_carry_pins_what_the_image_lacks_for_python_312(tmp_path: Path) -> None:
    pins = dict(line.split("==") for line in _gpu.carry(REPO / "benchmarks" / "gpu_image.txt"))
    assert pins["zarr"] == metadata.version("zarr") and "dask" in pins
    assert not {"torch", "timm", "numpy", "losa-cache"} & set(pins)  # on the image / ours
    # dask needs importlib_metadata only below Python 3.12, the GPU machine's version
    assert "importlib-metadata" not in _gpu.closure()
    empty = tmp_path / "none.txt"
    empty.write_text("# an image holding nothing\n")
    assert {"torch", "timm", "zarr"} <= {p.split("==")[0] for p in _gpu.carry(empty)}


def test_prepare_dry_run_prints_the_download_and_writes_nothing(tmp_path: Path) -> None:
    wheels = REPO / ".wheels"
    before = sorted(wheels.iterdir()) if wheels.exists() else None
    res = gpu_sh("--prepare", "--dry-run", tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"zarr=={metadata.version('zarr')}" in res.stdout
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in res.stdout
    assert "torch==" not in res.stdout
    assert (sorted(wheels.iterdir()) if wheels.exists() else None) == before


def test_budget_and_step_timeouts_are_enforced_and_reported(tmp_path: Path) -> None:
    res = gpu_sh("--dry-run", tmp=tmp_path, GPU_SH_STEP_S="1")
    assert res.returncode == 1, res.stdout + res.stderr
    steps = {s["step"]: s for s in summary(tmp_path)["steps"]}
    assert steps["extract-demo"]["timed_out"] and steps["extract-demo"]["limit_s"] == 1
    assert steps["train-demo"]["skipped"] and steps["sweep-demo"]["skipped"]  # no store
    assert summary(tmp_path)["ok"] is False


@pytest.mark.slow
def test_dry_run_runs_every_benchmark_and_writes_their_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = gpu_sh("--dry-run", tmp=tmp_path, OUT=str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    doc = summary(tmp_path)
    assert doc["ok"] and doc["dry_run"] and doc["wall_s"] <= doc["budget_s"]
    names = [s["step"] for s in doc["steps"]]
    assert names == ["extract-demo", "store-demo", "train-demo", "sweep-demo"]
    written = [f for s in doc["steps"] for f in s["results"]]
    kinds = sorted(f.split("-")[0] for f in written)
    assert kinds == ["extract", "sweep", "train"]
    for name in written:
        result = json.loads((tmp_path / "results" / name).read_text())
        assert result["benchmark"] == name.split("-")[0]
    (tarball,) = out.glob("gpu-results-*.tar.gz")
    with tarfile.open(tarball) as tar:
        members = set(tar.getnames())
    assert set(written) <= members and "logs/train-demo.log" in members
    assert len(list(out.glob("gpu-2*.json"))) == 1
    assert not list(tmp_path.glob("losa-gpu.*"))  # the scratch folder is removed


def test_stale_wheels_are_the_ones_carry_txt_does_not_pin(tmp_path: Path) -> None:
    (tmp_path / "carry.txt").write_text("zarr==3.1.6\ngoogle-crc32c==1.9.0\n")
    for name in [
        "zarr-3.1.6-py3-none-any.whl",
        "zarr-3.0.0-py3-none-any.whl",
        "google_crc32c-1.9.0-cp312-cp312-manylinux2014_x86_64.whl",
        "dask-2026.8.0-py3-none-any.whl",
    ]:
        (tmp_path / name).touch()
    stale = ["dask-2026.8.0-py3-none-any.whl", "zarr-3.0.0-py3-none-any.whl"]
    assert _gpu.stale_wheels(tmp_path) == stale
