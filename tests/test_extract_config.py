"""ExtractConfig refuses bad values itself (Python callers too), and the CLI prints one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from losa_cache.cli.common import user_errors
from losa_cache.cli.main import app
from losa_cache.data.decode import DEFAULT_MAX_PIXELS
from losa_cache.extract import ExtractConfig
from losa_cache.store import open_store

BASE = {"model": "vit_micro", "dataset": "demo", "store": "s.zarr", "random_init": True}
BAD = [
    ("batch_size", -5, r"--batch-size must be an integer >= 1, got -5"),
    ("batch_size", 0, r"--batch-size must be an integer >= 1, got 0"),
    ("limit", -3, r"--limit must be an integer >= 1, got -3"),
    ("limit", 0, r"--limit must be an integer >= 1"),
    ("shard_rows", 0, r"--shard-rows must be an integer >= 1"),
    ("chunk_rows", -1, r"--chunk-rows must be an integer >= 1"),
    ("workers", -2, r"--workers must be an integer >= -1"),
    ("seed", -1, r"--seed must be an integer >= 0"),
    ("input_size", 0, r"--input-size must be an integer >= 1"),
    ("max_pixels", 0, r"--max-pixels must be an integer >= 1"),
    ("crop_pct", 0.0, r"--crop-pct must be a number > 0"),
    ("crop_pct", float("nan"), r"--crop-pct must be a number > 0"),
    ("batch_size", "64", r"--batch-size must be an integer"),
    ("dtype", "int4", "unknown store dtype 'int4'"),
    ("taps", "blocks,attnn", "unknown tap 'attnn'"),
    ("codec", "gzip", "unknown codec 'gzip'"),
    ("precision", "fp64", "unknown precision 'fp64'"),
    ("device", "gpu", "--device 'gpu' is not a device"),
]


@pytest.mark.parametrize(("name", "value", "match"), BAD)
def test_bad_values_are_refused_by_the_config(name: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExtractConfig(**BASE, **{name: value})


def test_good_values_pass() -> None:
    cfg = ExtractConfig(**BASE, workers=-1, limit=1, seed=0, crop_pct=0.875, device="cuda:3")
    assert cfg.max_pixels == DEFAULT_MAX_PIXELS and cfg.to_dict()["max_pixels"] == cfg.max_pixels


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--batch-size", "-5"], "--batch-size must be an integer >= 1, got -5"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--limit", "-3"], "--limit must be an integer >= 1, got -3"),
        (["--shard-rows", "0"], "--shard-rows must be an integer >= 1, got 0"),
        (["--chunk-rows", "0"], "--chunk-rows must be an integer >= 1, got 0"),
        (["--workers", "-7"], "--workers must be an integer >= -1, got -7"),
        (["--max-pixels", "0"], "--max-pixels must be an integer >= 1, got 0"),
        (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
        (["--input-size", "0"], "--input-size must be an integer >= 1, got 0"),
        (["--crop-pct", "-0.5"], "--crop-pct must be a number > 0, got -0.5"),
    ],
)
def test_cli_prints_one_line_and_writes_nothing(
    args: list[str], match: str, tmp_path: Path
) -> None:
    store = tmp_path / "s.zarr"
    cmd = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo"]
    result = CliRunner().invoke(app, [*cmd, "--store", str(store), *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {match}"
    assert not store.exists()


def test_cli_cuda_without_gpu_says_use_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = tmp_path / "s.zarr"
    cmd = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo"]
    result = CliRunner().invoke(app, [*cmd, "--store", str(store), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --device cuda: no CUDA GPU")
    assert "--device cpu" in result.output and "Traceback" not in result.output
    assert not store.exists()


def test_max_pixels_help_states_the_real_default() -> None:
    out = CliRunner().invoke(app, ["extract", "--help"], terminal_width=200).output
    assert f"{DEFAULT_MAX_PIXELS}" in out.replace("\n", "").replace(" ", "")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--retries", "-1"], "--retries must be an integer >= 0, got -1"),
        (["--shards-per-task", "0"], "--shards-per-task must be an integer >= 1, got 0"),
    ],
)
def test_cluster_options_are_checked_before_a_cluster_starts(
    args: list[str], match: str, tmp_path: Path
) -> None:
    store = tmp_path / "s.zarr"
    cmd = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo"]
    result = CliRunner().invoke(app, [*cmd, "--store", str(store), "--cluster", "local:1", *args])
    assert (result.exit_code, result.output.strip()) == (2, f"error: {match}")
    assert not store.exists()


def test_big_image_is_skipped_naming_max_pixels_and_one_class_warns(tmp_path: Path) -> None:
    for name, size in [("big.png", (40, 30)), ("small.png", (20, 20))]:
        (tmp_path / "pets" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size).save(tmp_path / "pets" / "cat" / name)
    store = tmp_path / "s.zarr"
    cmd = ["extract", "--model", "vit_micro", "--random-init", "--workers", "0"]
    dataset = f"imagefolder:{tmp_path / 'pets'}"
    args = [*cmd, "--dataset", dataset, "--store", str(store), "--max-pixels", "1000"]
    with pytest.warns(UserWarning, match=r"imagefolder:.*every labelled image has class 'cat'"):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (skipped,) = open_store(str(store)).skipped()
    assert "cat/big.png" in skipped["error"] and "--max-pixels" in skipped["error"]
    assert "1,200 pixels is over the limit of 1,000" in skipped["error"]


def test_cli_warnings_are_one_line() -> None:
    with user_errors():
        text = warnings.formatwarning(UserWarning("a: b"), UserWarning, "/x/y.py", 3, "src")
    assert text == "warning: a: b\n"
    assert warnings.formatwarning(UserWarning("a"), UserWarning, "/x/y.py", 3) != text


def test_the_extract_command_builds_the_config_python_would(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`extract` is wiring: its flags make the ExtractConfig and DaskConfig a Python caller
    builds (lists split at commas, sizes parsed), handed to losa_cache.api.extract."""
    import losa_cache.api
    from losa_cache.extract import DaskConfig

    seen = {}

    def fake(cfg, *, dask, progress, storage_options):
        seen.update(cfg=cfg, dask=dask, progress=progress)
        raise ValueError("stop here")

    monkeypatch.setattr(losa_cache.api, "extract", fake)
    res = CliRunner().invoke(app, ["extract", "--model", "vit_micro", "--dataset", "demo",
                                   "--store", str(tmp_path / "s.zarr"), "--random-init",
                                   "--splits", "train,val", "--max-file-bytes", "2MiB",
                                   "--crop-mode", "squash", "--retries", "1", "-q"])  # fmt: skip
    assert res.exit_code == 2 and "stop here" in res.output
    want = ExtractConfig(model="vit_micro", dataset="demo", store=str(tmp_path / "s.zarr"),
                         random_init=True, splits=["train", "val"], max_file_bytes=2 * 2**20,
                         crop_mode="squash")  # fmt: skip
    assert seen["cfg"] == want and seen["dask"] == DaskConfig(retries=1)
    assert seen["progress"] is False
