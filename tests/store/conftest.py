"""Small stores of every dtype and codec (vit_micro, demo data), extracted once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests._stores import extract_store


@pytest.fixture(scope="session")
def kind_store(make_store: Callable[..., str]) -> Callable[[str, str], str]:
    """``kind_store(dtype, codec)``: the path of a complete store of 3 x 10 demo rows, 2-row
    chunks and 6-row shards (5 shards, the last one partial: padded edge chunks)."""

    def get(dtype: str, codec: str) -> str:
        return make_store(f"{dtype}-{codec}", dtype=dtype, codec=codec, limit=9, layers="1,3",
                          chunk_rows=2, shard_rows=6)  # fmt: skip

    return get


@pytest.fixture
def copy_store(store_copy: Callable[[str], Path]) -> Callable[[str], Path]:
    """A private copy of a store, free to damage (the top conftest's ``store_copy``)."""
    return store_copy


@pytest.fixture(scope="session")
def tiny_extract() -> Callable[..., str]:
    """``tiny_extract(path, **overrides)``: extract a vit_micro store of 3 demo images per
    split in process (2-row chunks, 4-row shards) to ``path``, which it returns; a module
    fixes its own defaults with ``functools.partial`` (later keywords win)."""

    def run(path: Path | str, **overrides: Any) -> str:
        cfg = {"limit": 3, "chunk_rows": 2, "shard_rows": 4, "batch_size": 4}
        return extract_store(path, **{**cfg, **overrides})

    return run
