"""Shared fixtures: tiny backbones, the embedded demo data, small stores.

Every test store comes from one factory, ``make_store(**config)``: a store is extracted once
per session (per xdist worker) for each distinct config, so files asking for the same store
share one build. A test that changes a store works on ``store_copy(path)``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests._stores import MICRO_STORE, STORE_BASE, extract_store

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


MakeStore = Callable[..., str]


@pytest.fixture(scope="session")
def make_store(tmp_path_factory: pytest.TempPathFactory) -> MakeStore:
    """``make_store(name="store", then=None, **config) -> path``: a complete store of
    ``STORE_BASE`` updated with ``config`` (ExtractConfig's fields), extracted once per
    session for each distinct (name, then, config); ``then(path)`` runs once on a new store
    (adding tasks, say), so fixtures defined twice (imported into another module) share one
    store. Read-only: a test that changes it takes ``store_copy(path)``."""
    made: dict[tuple, str] = {}

    def get(name: str = "store", then: Callable[[str], object] | None = None,
            **config: Any) -> str:  # fmt: skip
        cfg = {**STORE_BASE, **config}
        settings = tuple(sorted((k, repr(v)) for k, v in cfg.items()))
        key = (name, then and then.__qualname__, settings)
        if key not in made:
            path = extract_store(tmp_path_factory.mktemp("stores") / f"{name}.zarr", **cfg)
            if then is not None:
                then(path)
            made[key] = path
        return made[key]

    return get


@pytest.fixture
def store_copy(tmp_path: Path) -> Callable[[str | Path], Path]:
    """``store_copy(path) -> copy``: a private copy of a (session) store, free to change or
    damage; repeated calls for one store in one test give separate copies."""

    def copy(path: str | Path) -> Path:
        dst = tmp_path / Path(path).name
        n = 1
        while dst.exists():
            dst, n = tmp_path / f"{Path(path).stem}-{n}{Path(path).suffix}", n + 1
        shutil.copytree(path, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def micro_store(make_store: MakeStore) -> str:
    """A complete fp32 store of the demo data set (first 64 rows per split) from vit_micro."""
    return make_store("micro", **MICRO_STORE)
