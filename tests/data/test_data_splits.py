"""`--split`: held-out splits carved from train, stratified, seeded, recorded in the store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.data.splits import SplitSpec, carve_splits, parse_split_spec
from losa_cache.extract import ExtractConfig
from losa_cache.store import open_store

# 3 classes of 20, 10 and 30 rows, interleaved; rows 100.. are a separate "extra" split
LABELS = np.array([i % 3 for i in range(60)] + [0] * 5, dtype=np.int32)
LABELS[np.flatnonzero(LABELS[:60] == 1)[10:]] = 2  # class 1: 10 rows, class 2: 30
BY_SPLIT = {"train": list(range(60)), "extra": list(range(60, 65))}


def test_parse_fractions_counts_and_seed() -> None:
    spec = parse_split_spec("val=0.1, test=7 ,seed=3")
    assert spec == SplitSpec((("val", 0.1), ("test", 7)), seed=3)
    assert spec.counts(60) == {"val": 6, "test": 7}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("val", "NAME=SIZE"),
        ("val=0", "neither a fraction"),
        ("val=1.5", "neither a fraction"),
        ("val=abc", "neither a fraction"),
        ("train=0.1", "cannot name a new split"),
        ("val=0.1,val=0.2", "given twice"),
        ("val=0.6,test=0.5", "add up to 1.1"),
        ("seed=2", "names no split"),
        ("val=0.1,seed=-1", "seed must be an integer"),
    ],
)
def test_parse_refuses_with_one_line(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as e:
        parse_split_spec(text)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=words):  # the config refuses it before any work
        ExtractConfig(model="vit_micro", dataset="demo", store="x", split=text)


def test_carve_is_a_stratified_partition_of_train() -> None:
    out = carve_splits(BY_SPLIT, LABELS, "val=0.2,test=6")
    assert list(out) == ["train", "extra", "val", "test"]
    assert out["extra"] == BY_SPLIT["extra"]  # other splits untouched
    parts = [out["train"], out["val"], out["test"]]
    assert sorted(r for p in parts for r in p) == BY_SPLIT["train"]  # a partition of train
    assert all(p == sorted(p) for p in parts)
    assert (len(out["val"]), len(out["test"])) == (12, 6)
    sizes = Counter(LABELS[:60].tolist())
    for name, frac in (("val", 0.2), ("test", 0.1)):  # each class gives its share, +-1
        got = Counter(LABELS[out[name]].tolist())
        for c, n in sizes.items():
            assert abs(got[c] - frac * n) <= 1, (name, c, got[c], frac * n)


def test_carve_is_seeded() -> None:
    a = carve_splits(BY_SPLIT, LABELS, "val=0.2")
    assert a == carve_splits(BY_SPLIT, LABELS, "val=0.2,seed=0")
    assert a["val"] != carve_splits(BY_SPLIT, LABELS, "val=0.2,seed=1")["val"]


@pytest.mark.parametrize(
    ("by_split", "text", "words"),
    [
        ({"train": [0, 1, 2], "val": [3]}, "val=1", r"already has split\(s\) \['val'\]"),
        ({"train800": [0, 1, 2]}, "val=1", "carves from a 'train' split"),
        ({"train": [0, 1, 2]}, "val=0.1", "val would get no row"),
        ({"train": [0, 1, 2]}, "val=2,test=1", "train must keep at least one"),
    ],
)
def test_carve_refuses(by_split: dict, text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        carve_splits(by_split, np.zeros(4, np.int32), text)


def test_extract_records_the_carved_splits(photos: Path, photo_store: str) -> None:
    """The store holds train/val/test, the labels stratified, the spec in the manifest."""
    store = open_store(photo_store)
    assert list(store.splits) == ["train", "val", "test"]
    sizes = {k: len(v) for k, v in store.splits.items()}
    assert sizes == {"train": 25, "val": 10, "test": 5}
    assert store.manifest.extract_config["split"] == "val=0.25,test=5"
    assert sorted(np.concatenate(list(store.splits.values())).tolist()) == list(range(40))
    val = Counter(store.labels()[store.splits["val"]].tolist())
    assert val == {0: 3, 1: 2, 2: 5}  # 12, 8 and 20 images: a quarter of each
    # the same carving as the data layer's, on the data set's own rows
    from losa_cache.data import get_dataset

    ds = get_dataset(f"imagefolder:{photos}")
    carved = carve_splits(ds.split_indices(), ds.table.labels, "val=0.25,test=5")
    sources = store.sources
    for name, rows in carved.items():
        assert sorted(sources[store.splits[name]]) == sorted(ds.samples[r].source for r in rows)


def test_resume_needs_the_same_split(photos: Path, photo_store: str, tmp_path: Path) -> None:
    """The carved rows are part of the store's identity: another --split is refused."""
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(photo_store, copy)
    base = ["extract", "--model", "vit_micro", "--random-init", "--dataset",
            f"imagefolder:{photos}", "--store", str(copy), "--dtype", "fp32", "--workers", "0",
            "--chunk-rows", "4", "--shard-rows", "8"]  # fmt: skip
    same = CliRunner().invoke(app, [*base, "--split", "val=0.25,test=5"])
    assert same.exit_code == 0, same.output
    assert "resumed" in same.output
    other = CliRunner().invoke(app, [*base, "--split", "val=0.3,test=5"])
    assert other.exit_code != 0
    assert open_store(copy).manifest.extract_config["split"] == "val=0.25,test=5"


def test_a_split_the_folder_has_is_refused(tmp_path: Path, make_photos) -> None:
    root = make_photos(tmp_path / "photos", {"a": 2, "b": 2}, splits=("train", "val"))
    res = CliRunner().invoke(app, ["extract", "--model", "vit_micro", "--random-init",
                                   "--dataset", f"imagefolder:{root}", "--store",
                                   str(tmp_path / "s.zarr"), "--split", "val=0.5"])  # fmt: skip
    assert res.exit_code != 0
    assert "already has split(s) ['val']" in res.output
    assert not (tmp_path / "s.zarr").exists()  # refused before anything was written
