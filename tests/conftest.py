"""Shared fixtures: tiny backbones, the embedded demo data, small stores."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

torch.set_num_threads(1)  # tiny models: OpenMP threads only contend on 2 shared cores

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def load_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """``load_benchmark("train")``: benchmarks/train.py as a module, its results going to
    tmp_path instead of benchmarks/results (the scripts are not a package: path + spec)."""

    def load(name: str) -> ModuleType:
        monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path)
        return module

    return load


@pytest.fixture(scope="session")
def micro_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A complete fp32 store of the demo data set (first 64 rows per split) from vit_micro."""
    from losa_cache.extract import ExtractConfig, extract

    path = str(tmp_path_factory.mktemp("stores") / "micro.zarr")
    extract(
        ExtractConfig(
            model="vit_micro",
            random_init=True,
            dataset="demo",
            store=path,
            dtype="float32",
            limit=64,
            workers=0,
            chunk_rows=16,
            shard_rows=32,
        ),
        progress=False,
    )
    return path
