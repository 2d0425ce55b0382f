"""Tiny generated VTAB-style tasks (real MNIST / CIFAR-10 test images) for the accuracy tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from losa_cache.pipelines.vtab_tasks import build_tasks

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/ is a folder of scripts

#: Small enough for seconds, big enough that every class of every task appears.
TINY = {"train_size": 27, "val_size": 9, "test_size": 18}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder; tests that need it skip where it is absent."""
    if not (SHARED_DATA / "cifar10" / "test.tar").is_file():
        pytest.skip(f"real data not found under {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_sizes() -> dict[str, int]:
    return dict(TINY)


@pytest.fixture(scope="session")
def build_tiny(shared_data: Path) -> Callable[..., Path]:
    """``build_tiny(out, seed=0) -> out``: all four tasks at TINY sizes."""

    def build(out: Path, seed: int = 0) -> Path:
        build_tasks(out, shared_data, seed=seed, **TINY)
        return out

    return build


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory: pytest.TempPathFactory, build_tiny: Callable[..., Path]) -> Path:
    """All four tasks, TINY sizes, seed 0 (built once per session)."""
    return build_tiny(tmp_path_factory.mktemp("vtab") / "tasks")
