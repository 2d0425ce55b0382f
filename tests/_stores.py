"""The one recipe every test store is built from (tests/conftest.py's ``make_store``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: What a test store is unless its config says otherwise: vit_micro with random weights
#: (seed 0) over the embedded demo data, extracted in process.
STORE_BASE: dict[str, Any] = {"model": "vit_micro", "random_init": True, "dataset": "demo",
                              "workers": 0}  # fmt: skip

#: The micro store: every block, fp32, 64 rows per split, chunks of 16, shards of 32.
MICRO_STORE: dict[str, Any] = {"dtype": "float32", "limit": 64, "chunk_rows": 16,
                               "shard_rows": 32}  # fmt: skip


def extract_store(path: str | Path, **config: Any) -> str:
    """Extract ``STORE_BASE`` updated with ``config`` to ``path`` (no progress bar)."""
    from losa_cache.extract import ExtractConfig, extract

    extract(ExtractConfig(**{**STORE_BASE, **config, "store": str(path)}), progress=False)
    return str(path)
