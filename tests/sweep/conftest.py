"""A two-task fp16 store (vit_micro, 8-row chunks) and small sweep configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from losa_cache.sweep import SweepConfig

torch.set_num_threads(1)

#: "full" labels every row (the demo's labels); "half" every other row (a subset task).
TASKS = ("full", "half")


def add_sweep_tasks(path: str) -> None:
    """Task ``full``: the demo's labels; ``half``: every other row of them."""
    from losa_cache.store import add_task, open_store

    store = open_store(path)
    labels, classes = store.labels().copy(), store.classes()
    add_task(path, "full", labels, classes)
    labels[1::2] = -1
    add_task(path, "half", labels, classes)


@pytest.fixture(scope="session")
def sweep_store(make_store: Callable[..., str]) -> str:
    """vit_micro, 48 rows per split, fp16, chunks of 8 rows, tasks ``full`` and ``half``."""
    return make_store("two_tasks", then=add_sweep_tasks, dtype="float16", limit=48,
                      chunk_rows=8, shard_rows=16)  # fmt: skip


def num_classes(store: str) -> int:
    from losa_cache.store import open_store

    return len(open_store(store).classes("full"))


SMALL: dict[str, Any] = {
    "task": ["full"],
    "rank": [4],
    "layers": ["evenly:2", "all"],
    "lr": [0.05],
    "method": ["losa", "linear"],
    "steps": 7,
    "batch_size": 8,
    "device": "cpu",
    "workers": 1,
    "speed_batches": 0,
    "amp": "fp32",
}  # auto is bf16 on AVX512-BF16 CPUs


@pytest.fixture
def make_sweep(sweep_store: str, tmp_path: Path) -> Callable[..., SweepConfig]:
    """A seconds-long sweep on the two-task store; overrides win."""

    def make(name: str = "sweep", **overrides: Any) -> SweepConfig:
        return SweepConfig(
            **{"store": sweep_store, "out": str(tmp_path / name), **SMALL, **overrides}
        )

    return make


def adapter_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "adapter.safetensors"))


def checkpoint_weights(out: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    assert a.keys() == b.keys()
    if atol == 0.0:
        return all(torch.equal(a[k], b[k]) for k in a)
    return all(np.allclose(a[k].numpy(), b[k].numpy(), atol=atol, rtol=0) for k in a)
