"""Dask extraction over WebDataset shards: tasks split by tar shard, store == in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _dist_helpers import assert_same_store

from losa_cache.data import get_dataset
from losa_cache.distributed import extract_distributed, group_shards, shard_parts
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import open_store
from losa_cache.store import schema as S
from tests._packed_sets import EXTRACT, write_imagefolder, write_wds

#: 20 rows in 10 store shards of 2 rows, over tar shards of 3 samples
CFG: dict[str, Any] = {**EXTRACT, "shard_rows": 2}


@pytest.fixture(scope="module")
def wds_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("dist_wds")
    patterns = write_wds(write_imagefolder(root / "folder"), root / "wds")
    return "wds:" + ",".join(f"{split}={p}" for split, p in patterns.items()) + ",label-key=txt"


def test_tasks_are_split_by_tar_shard(wds_spec: str) -> None:
    dataset = get_dataset(wds_spec)
    rows = list(range(len(dataset)))
    layout = S.plan_layout(len(rows), 5, 8, (1,), "float32", chunk_rows=2, shard_rows=2)
    parts = shard_parts(layout, dataset, rows)
    firsts = np.arange(layout.num_shards) * 2
    assert parts.tolist() == dataset.row_parts()[firsts].tolist()
    groups = group_shards(list(range(layout.num_shards)), 8, 2, parts)
    assert [s for g in groups for s in g] == list(range(layout.num_shards))
    for g in groups:  # a task's store shards all start in one tar shard
        assert len({int(parts[s]) for s in g}) == 1
    assert len(groups) == len(set(parts.tolist())) < layout.num_shards
    assert group_shards([0, 1, 2, 3, 4], 2, 2, np.array([0, 0, 0, 1, 1])) == [
        [0, 1], [2], [3, 4]]  # fmt: skip


def forbid_indexing(forbid: bool) -> None:
    """On a worker: make reading a tar index fail (or undo that)."""
    import losa_cache.data.wds as w

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a worker re-read the tar index")

    if forbid:
        w._saved_index_shard = w._index_shard
        w._index_shard = boom
    else:
        w._index_shard = w._saved_index_shard


def test_cluster_store_over_wds_equals_in_process(
    client: Any, wds_spec: str, tmp_path: Path
) -> None:
    """Workers get the client's index: they read only their tasks' shards."""
    local, dask = str(tmp_path / "local.zarr"), str(tmp_path / "dask.zarr")
    extract(ExtractConfig(dataset=wds_spec, store=local, **CFG), progress=False)
    client.run(forbid_indexing, True)
    try:
        result = extract_distributed(
            ExtractConfig(dataset=wds_spec, store=dask, **CFG), client=client, progress=False,
            retries=0,
        )  # fmt: skip
    finally:
        client.run(forbid_indexing, False)
    assert result.written == 20 and result.shards_written == result.shards_total == 10
    assert_same_store(dask, local)
    assert open_store(dask).manifest.identity["data"]["wds_index_sha256"]
