"""Tiny stores and run configs for the training tests (vit_micro: 4 blocks, D 32, T 17)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from losa_cache.train import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fp16_store(make_store: Callable[..., str]) -> str:
    """Blocks 1 and 3 only, fp16, 32 rows per split, chunks of 8 rows."""
    return make_store("partial", layers="1,3", dtype="float16", limit=32, chunk_rows=8,
                      shard_rows=16)  # fmt: skip


@pytest.fixture(scope="session")
def tap_stores(make_store: Callable[..., str], tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, str]:  # fmt: skip
    """fp32, 32 rows per split, chunks of 8: ``taps`` holds every tap of every block (sums
    2 and 4); ``parts`` its blocks and embed only (no sums); ``sum4`` its sum:4 only (a
    device's subset)."""
    from losa_cache.store.subset import subset_store

    full = make_store("taps", dtype="float32", limit=32, chunk_rows=8, shard_rows=16,
                      taps="blocks,embed,attn,mlp,sum:2,4")  # fmt: skip
    root = tmp_path_factory.mktemp("tap_feed")
    out = {"taps": full}
    for name, taps in (("parts", "blocks,embed"), ("sum4", "sum:4")):
        out[name] = str(root / f"{name}.zarr")
        subset_store(full, out[name], taps=taps)
    return out


SMALL = {
    "rank": 4,
    "layers": "evenly:2",
    "batch_size": 16,
    "steps": 6,
    "eval_every": 3,
    "log_every": 1,
    "workers": 1,
    "device": "cpu",
    "amp": "fp32",
}


@pytest.fixture
def make_cfg(micro_store: str, tmp_path: Path) -> Callable[..., TrainConfig]:
    """A seconds-long run on the shared fp32 micro store; overrides win."""

    def make(name: str = "run", **overrides: Any) -> TrainConfig:
        return TrainConfig(
            **{"store": micro_store, "out": str(tmp_path / name), **SMALL, **overrides}
        )

    return make
