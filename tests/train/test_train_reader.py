"""StoreReader: the right rows, features and labels; bytes counted; order not chunk-bound."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from losa_cache.store import StoreError, add_task, open_store
from losa_cache.train import StoreReader, labelled_rows


def take(reader: StoreReader, n: int, offset: int = 0) -> list:
    it = reader.batches(offset)
    out = list(itertools.islice(it, n))
    it.close()
    return out


@pytest.fixture
def store(micro_store: str):
    return open_store(micro_store)


def make(store, layers=(1, 3), batch: int = 24, **kw) -> StoreReader:
    rows, labels = labelled_rows(store, "train", None)
    return StoreReader(store, rows, labels, layers, batch, seed=0, buffer_rows=32, workers=2, **kw)


def test_batches_hold_the_stores_features_and_labels(store) -> None:
    with make(store) as reader:
        batches = take(reader, 6)  # > 2 epochs of 64 rows
    all_labels = store.labels()
    for feats, labels, rows in batches:
        assert sorted(feats) == [1, 3] and feats[3].shape == (24, 17, 32)
        assert feats[3].dtype == torch.float32
        for layer in (1, 3):
            expect = torch.from_numpy(store.features(layer)[rows.numpy()])
            assert torch.equal(feats[layer], expect)
        assert torch.equal(labels, torch.from_numpy(all_labels[rows.numpy()]).long())
    epoch = torch.cat([b.rows for b in batches])[:64]
    assert sorted(epoch.tolist()) == list(range(64))  # the train split, each row once


def test_resume_offset_continues_the_stream(store) -> None:
    with make(store) as reader:
        full = take(reader, 7)
        rest = take(reader, 4, offset=3 * 24)
    for x, y in zip(full[3:], rest, strict=True):
        assert torch.equal(x.rows, y.rows) and torch.equal(x.features[3], y.features[3])


def test_eval_pass_is_sequential_and_complete(store) -> None:
    with make(store, layers=(3,)) as reader:
        batches = list(reader.eval_batches(batch_size=20))
        assert [len(b.rows) for b in batches] == [20, 20, 20, 4]
        assert torch.cat([b.rows for b in batches]).tolist() == list(range(64))
        assert reader.bytes_read == 64 * 17 * 32 * 4  # only block 3 was read


def test_invalid_and_unlabelled_rows_are_dropped(micro_store: str, tmp_path: Path) -> None:
    path = tmp_path / "copy.zarr"
    shutil.copytree(micro_store, path)
    store = open_store(path)
    labels = store.labels().copy()
    labels[[0, 5, 17]] = -1
    add_task(path, "partial", labels, store.classes())
    rows, kept = labelled_rows(open_store(path), "train", "partial")
    assert len(rows) == 61 and not set(rows.tolist()) & {0, 5, 17} and (kept >= 0).all()


def test_fp16_store_and_missing_layers(fp16_store: str) -> None:
    store = open_store(fp16_store)
    rows, labels = labelled_rows(store, "train", None)
    with StoreReader(store, rows, labels, (1, 3), 8, buffer_rows=16) as reader:
        feats, _, _ = take(reader, 1)[0]
        assert feats[1].dtype == torch.float16
        assert reader.stats()["buffer_rows"] == 16
    with pytest.raises(StoreError, match=r"no blocks \[0\].*holds blocks \[1, 3\]"):
        StoreReader(store, rows, labels, (0, 3), 8)


def test_same_seed_same_batches(store) -> None:
    with make(store) as a, make(store) as b:
        ra = [x.rows for x in take(a, 4)]
        rb = [x.rows for x in take(b, 4)]
    assert all(torch.equal(x, y) for x, y in zip(ra, rb, strict=True))
    assert not np.array_equal(ra[0].numpy(), np.arange(24))  # actually shuffled
