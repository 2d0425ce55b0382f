"""inat2018 / inat2021: COCO-style JSON parsing, class order, and missing-file messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from losa_cache.data import DatasetError, INatDataset, dataset_sizes, get_dataset
from tests.data.conftest import inat_doc


def test_rows_labels_and_class_names(inat_root: Path) -> None:
    ds = get_dataset("inat2018", data_root=inat_root)
    assert isinstance(ds, INatDataset)
    # class index = position of the category id in sorted ids (2, 5, 7)
    assert ds.classes == ["Bufo bufo", "Parus major", "Quercus robur"]
    assert ds.meta["category_ids"] == [2, 5, 7]
    assert [(s.source, s.label, s.split) for s in ds.samples] == [
        ("train_val2018/Plantae/7/a.jpg", 2, "train"),
        ("train_val2018/Amphibia/2/b.jpg", 0, "train"),
        ("train_val2018/Aves/5/c.jpg", 1, "train"),
        ("train_val2018/Aves/5/d.jpg", 1, "val"),
    ]
    assert ds.split_indices() == {"train": [0, 1, 2], "val": [3]}
    assert ds.load(3).size == (8, 6)


def test_path_spec_and_deterministic(inat_root: Path) -> None:
    by_path, by_root = (
        get_dataset(f"inat2018:{inat_root}"),
        get_dataset("inat2018", data_root=inat_root),
    )
    assert (by_path.samples, by_path.classes, by_path.root) == (
        by_root.samples,
        by_root.classes,
        by_root.root,
    )
    assert get_dataset("inat2018", data_root=inat_root) == by_root


def test_inat2021_file_names_and_shared_root(tmp_path: Path) -> None:
    root = tmp_path / "inat2021"
    root.mkdir()
    cats = {0: "Abies alba", 1: "Acer rubrum"}
    for name, images in (
        ("train.json", [(1, "train/x.jpg", 1)]),
        ("val.json", [(2, "val/y.jpg", 0)]),
    ):
        (root / name).write_text(json.dumps(inat_doc(images, cats)), encoding="utf-8")
    ds = get_dataset("inat2021", data_root=tmp_path)  # a shared root holding inat2021/
    assert ds.root == str(root.resolve())
    assert [(s.label, s.split) for s in ds.samples] == [(1, "train"), (0, "val")]


def test_missing_root_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train2018\.json and val2018\.json in .*nowhere"):
        get_dataset("inat2018", data_root=tmp_path / "nowhere")


def test_no_data_root_says_how_to_give_one() -> None:
    with pytest.raises(DatasetError, match=r"data_root=.*inat2021:PATH"):
        get_dataset("inat2021")


def test_missing_val_json(inat_root: Path) -> None:
    (inat_root / "val2018.json").unlink()
    with pytest.raises(DatasetError, match=r"missing .*val2018\.json"):
        get_dataset("inat2018", data_root=inat_root)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "cannot parse"),
        (json.dumps({"images": [], "annotations": []}), r"no list \['categories'\]"),
        (json.dumps(inat_doc([(1, "a.jpg", 99)], {2: "Bufo bufo"})), "unknown category_id 99"),
        (json.dumps(inat_doc([(1, "a.jpg", 2)], {2: "Toad"})), "category 2 is named 'Toad'"),
        (
            json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}),
            "record without 'file_name'",
        ),
    ],
)
def test_malformed_json_names_the_file(inat_root: Path, content: str, match: str) -> None:
    (inat_root / "val2018.json").write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=match) as info:
        get_dataset("inat2018", data_root=inat_root)
    assert "val2018.json" in str(info.value)


def test_sizes_counted_when_present_known_when_absent(inat_root: Path, tmp_path: Path) -> None:
    assert dataset_sizes("inat2018", data_root=inat_root) == {"train": 3, "val": 1}
    assert dataset_sizes("inat2018") == {"train": 437_513, "val": 24_426}
    assert dataset_sizes("inat2021", data_root=tmp_path / "none") == {
        "train": 2_686_843,
        "val": 100_000,
    }
    (inat_root / "val2018.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(DatasetError, match="cannot parse"):  # broken data never falls back
        dataset_sizes("inat2018", data_root=inat_root)
