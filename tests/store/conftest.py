"""Small stores of every dtype and codec (vit_micro, demo data), extracted once per session."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def kind_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], str]:
    """``kind_store(dtype, codec)``: the path of a complete store of 3 x 10 demo rows, 2-row
    chunks and 6-row shards (5 shards, the last one partial: padded edge chunks)."""
    from losa_cache.extract import ExtractConfig, extract

    made: dict[tuple[str, str], str] = {}

    def get(dtype: str, codec: str) -> str:
        if (dtype, codec) not in made:
            path = str(tmp_path_factory.mktemp("stores") / f"{dtype}-{codec}.zarr")
            extract(
                ExtractConfig(
                    model="vit_micro",
                    random_init=True,
                    dataset="demo",
                    store=path,
                    dtype=dtype,
                    codec=codec,
                    limit=9,
                    workers=0,
                    layers="1,3",
                    chunk_rows=2,
                    shard_rows=6,
                ),
                progress=False,
            )
            made[dtype, codec] = path
        return made[dtype, codec]

    return get


@pytest.fixture
def copy_store(tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of a store, free to damage."""

    def copy(path: str) -> Path:
        dst = tmp_path / Path(path).name
        shutil.copytree(path, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def tiny_extract() -> Callable[..., str]:
    """``tiny_extract(path, **overrides)``: extract a vit_micro store of 3 demo images per
    split in process (2-row chunks, 4-row shards) to ``path``, which it returns; a module
    fixes its own defaults with ``functools.partial`` (later keywords win)."""
    from losa_cache.extract import ExtractConfig, extract

    def run(path: Path | str, **overrides: Any) -> str:
        cfg = {"model": "vit_micro", "random_init": True, "dataset": "demo",
               "store": str(path), "limit": 3, "workers": 0, "chunk_rows": 2,
               "shard_rows": 4, "batch_size": 4}  # fmt: skip
        extract(ExtractConfig(**{**cfg, **overrides}), progress=False)
        return str(path)

    return run
