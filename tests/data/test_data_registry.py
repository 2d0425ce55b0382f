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
