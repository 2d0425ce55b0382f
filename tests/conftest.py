"""Shared fixtures: tiny backbones, the embedded demo data, small stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: OpenMP threads only contend on 2 shared cores

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
