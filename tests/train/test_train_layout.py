"""Batch order is a function of (split rows, seed, batch, buffer), never of the store layout."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from losa_cache.store import open_store
from losa_cache.train import StoreReader, TrainConfig, labelled_rows, train

LAYOUTS = {"c8-s16": (8, 16), "c4-s32": (4, 32), "c16-s16": (16, 16)}


@pytest.fixture(scope="module")
def fp16_stores(make_store) -> dict[str, str]:
    """The same 40 images per split in fp16 with three chunk/shard layouts."""
    out = {}
    for name, (chunk, shard) in LAYOUTS.items():
        path = make_store(name, layers="1,3", dtype="float16", limit=40, chunk_rows=chunk,
                          shard_rows=shard)  # fmt: skip
        assert open_store(path).layout.chunk_rows == chunk
        out[name] = path
    return out


def test_fp16_stores_with_other_chunks_and_shards_give_the_same_batches(fp16_stores) -> None:
    seen = []
    for path in fp16_stores.values():
        store = open_store(path)
        rows, labels = labelled_rows(store, "train", None)
        with StoreReader(
            store, rows, labels, (1, 3), 8, seed=5, buffer_rows=12, workers=2
        ) as reader:
            stream = reader.batches()
            seen.append(list(itertools.islice(stream, 12)))  # > 2 epochs of 40 rows
            stream.close()
    first = seen[0]
    for other in seen[1:]:
        for a, b in zip(first, other, strict=True):
            assert torch.equal(a.rows, b.rows) and torch.equal(a.labels, b.labels)
            assert all(torch.equal(a.features[k], b.features[k]) for k in (1, 3))
    assert not np.array_equal(first[0].rows.numpy(), np.arange(8))  # actually shuffled


@pytest.mark.parametrize("cache", ["none", "ram"])
def test_training_is_the_same_on_every_layout_by_default(
    fp16_stores, tmp_path: Path, cache: str
) -> None:
    """Default shuffle buffer, through train(): bit-identical weights whatever the chunks."""
    weights = []
    for name, path in fp16_stores.items():
        cfg = TrainConfig(
            store=path,
            out=str(tmp_path / name),
            rank=4,
            layers="store",
            steps=9,
            batch_size=8,
            seed=2,
            cache=cache,
            workers=1,
            device="cpu",
        )
        train(cfg, progress=False)
        weights.append(torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=True)["model"])
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in other)
