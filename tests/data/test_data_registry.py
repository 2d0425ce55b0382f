"""get_dataset spec parsing, KNOWN_SIZES / dataset_sizes, and the short repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from losa_cache.data import KNOWN_SIZES, DatasetError, dataset_sizes, get_dataset, valid_forms


def test_unknown_spec_lists_valid_forms() -> None:
    with pytest.raises(DatasetError, match="unknown data set spec 'cifar100'") as info:
        get_dataset("cifar100")
    for form in ("demo", "imagefolder:PATH", "vtab1k:PATH/TASK", "inat2018", "list:FILE"):
        assert form in str(info.value)
    assert str(info.value).endswith(valid_forms())


@pytest.mark.parametrize("spec", ["imagefolder", "vtab1k:", "list"])
def test_missing_argument(spec: str) -> None:
    with pytest.raises(DatasetError, match="needs an argument"):
        get_dataset(spec)


def test_bad_demo_seed() -> None:
    with pytest.raises(DatasetError, match="seed must be an integer"):
        get_dataset("demo:abc")


def test_known_sizes_table() -> None:
    assert KNOWN_SIZES["inat2018"] == {"train": 437_513, "val": 24_426}
    assert KNOWN_SIZES["inat2021"] == {"train": 2_686_843, "val": 100_000}
    assert KNOWN_SIZES["cifar10"] == {"train": 50_000, "test": 10_000}
    assert KNOWN_SIZES["imagenet1k"] == {"train": 1_281_167, "val": 50_000}
    assert KNOWN_SIZES["vtab1k"]["train800"] == 800 and KNOWN_SIZES["vtab1k"]["val200"] == 200
    assert KNOWN_SIZES["demo"] == dataset_sizes("demo")


def test_dataset_sizes(vtab_task: Path, tmp_path: Path) -> None:
    assert dataset_sizes(f"vtab1k:{vtab_task}")["test"] == 2  # counted from the data
    assert dataset_sizes(f"vtab1k:{tmp_path / 'absent'}") == KNOWN_SIZES["vtab1k"]
    assert dataset_sizes("imagenet1k") == KNOWN_SIZES["imagenet1k"]  # no adapter, known
    with pytest.raises(DatasetError, match=r"no sizes for 'imagefolder:.*not found"):
        dataset_sizes(f"imagefolder:{tmp_path / 'absent'}")
    with pytest.raises(DatasetError, match="no sizes for 'mnist'"):
        dataset_sizes("mnist")


def test_repr_is_short() -> None:
    text = repr(get_dataset("demo"))
    assert text.startswith("DemoDataset(spec='demo', rows=3150, classes=9") and len(text) < 200


def test_sample_table_is_a_compact_list_of_samples() -> None:
    """Rows pickle into every decoding worker: as a few numpy arrays, not 1 object each."""
    import pickle

    from losa_cache.data.base import Sample, SampleTable

    rows = [
        Sample(f"train/{i % 7}/img_{i:07d}.jpg", i % 5 - 1, ("train", "val")[i % 3 == 0])
        for i in range(20_000)
    ]
    rows[3] = Sample("ünïcode/ photo\udcff.jpg", 2, "test")  # non-UTF-8 bytes survive
    table = SampleTable(rows)
    assert len(table) == len(rows) and list(table) == rows and table == rows
    assert table[-1] == rows[-1] and table[5:9] == rows[5:9]
    with pytest.raises(IndexError):
        table[len(rows)]
    assert table.labels.tolist() == [s.label for s in rows]
    splits = ("val", "train", "test")  # first-appearance order
    expect = {n: [i for i, s in enumerate(rows) if s.split == n] for n in splits}
    assert table.split_rows() == expect
    blob = pickle.dumps(table)
    assert pickle.loads(blob) == table
    paths = sum(len(s.source.encode("utf-8", "surrogateescape")) for s in rows)
    assert len(blob) < paths + 10 * len(rows) < len(pickle.dumps(rows))
