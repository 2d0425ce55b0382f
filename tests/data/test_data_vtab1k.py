"""vtab1k: PEFT-community task folders, overlapping splits stored once, line-precise errors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from losa_cache.data import DatasetError, Vtab1kDataset, get_dataset

if TYPE_CHECKING:
    from tests.data.conftest import WriteImage


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_rows_splits_and_overlap(vtab_task: Path) -> None:
    ds = get_dataset(f"vtab1k:{vtab_task}")
    assert isinstance(ds, Vtab1kDataset)
    assert [s.source for s in ds.samples] == [
        "images/t0.jpg", "images/t1.jpg", "images/t2.jpg",
        "images/v0.jpg", "images/v1.jpg", "images/s0.jpg", "images/s1.jpg",
    ]  # fmt: skip
    assert [s.label for s in ds.samples] == [0, 1, 2, 1, 0, 2, 0]
    assert [s.split for s in ds.samples] == ["train800"] * 3 + ["val200"] * 2 + ["test"] * 2
    assert ds.split_indices() == {
        "train800": [0, 1, 2],
        "val200": [3, 4],
        "test": [5, 6],
        "train800val200": [0, 1, 2, 3, 4],  # derived: points at existing rows
    }
    assert ds.splits[-1] == "train800val200"
    assert ds.classes == ["0", "1", "2"] and ds.task == "dtd"
    assert ds.load(4).size == (8, 6)


def test_deterministic(vtab_task: Path) -> None:
    assert get_dataset(f"vtab1k:{vtab_task}") == get_dataset(f"vtab1k:{vtab_task}")


def test_image_only_in_union_file_becomes_its_own_row(
    vtab_task: Path, write_image: WriteImage
) -> None:
    with (vtab_task / "train800val200.txt").open("a") as f:
        f.write("images/extra.jpg 1\n")
    write_image(vtab_task / "images" / "extra.jpg")
    ds = Vtab1kDataset.from_path(vtab_task)
    assert len(ds) == 8 and ds.samples[7].split == "train800val200"
    assert ds.split_indices()["train800val200"] == [0, 1, 2, 3, 4, 7]


def test_missing_union_file_is_derived(vtab_task: Path) -> None:
    (vtab_task / "train800val200.txt").unlink()
    assert Vtab1kDataset.from_path(vtab_task).split_indices()["train800val200"] == [0, 1, 2, 3, 4]


def test_sparse_labels_map_to_sorted_class_positions(vtab_task: Path) -> None:
    write_lines(vtab_task / "train800.txt", ["images/t0.jpg 7", "images/t1.jpg 3"])
    write_lines(vtab_task / "val200.txt", ["images/v0.jpg 3"])
    write_lines(vtab_task / "test.txt", ["images/s0.jpg 7"])
    (vtab_task / "train800val200.txt").unlink()
    ds = Vtab1kDataset.from_path(vtab_task)
    assert ds.classes == ["3", "7"] and [s.label for s in ds.samples] == [1, 0, 0, 1]
    assert ds.meta["label_values"] == [3, 7]


def test_classnames_file_is_used_when_present(vtab_task: Path) -> None:
    write_lines(vtab_task / "classnames.txt", ["banded", "blotchy", "braided"])
    assert Vtab1kDataset.from_path(vtab_task).classes == ["banded", "blotchy", "braided"]
    write_lines(vtab_task / "classnames.txt", ["banded"])
    with pytest.raises(DatasetError, match="class-name file has only 1"):
        Vtab1kDataset.from_path(vtab_task)


def test_paths_with_spaces(vtab_task: Path, write_image: WriteImage) -> None:
    write_lines(vtab_task / "test.txt", ["images/my photo.jpg 2"])
    write_image(vtab_task / "images" / "my photo.jpg")
    ds = Vtab1kDataset.from_path(vtab_task)
    assert ds.samples[-1].source == "images/my photo.jpg" and ds.load(len(ds) - 1)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("images/v9.jpg", "expected '<relative image path> <label>'"),
        ("images/v9.jpg one", "label must be an integer"),
        ("images/v9.jpg -2", "label must be >= 0"),
        ("images/v9.jpg 1.5", "label must be an integer, got '1.5'"),
        ("images/v9.jpg 1_0", "label must be an integer, got '1_0'"),
    ],
)
def test_malformed_line_names_file_and_line(vtab_task: Path, line: str, match: str) -> None:
    write_lines(vtab_task / "val200.txt", ["images/v0.jpg 1", line])
    with pytest.raises(DatasetError, match=match) as info:
        Vtab1kDataset.from_path(vtab_task)
    assert f"{vtab_task / 'val200.txt'}:2" in str(info.value)


def test_repeated_line_within_a_split_is_kept_once(vtab_task: Path) -> None:
    write_lines(vtab_task / "test.txt", ["images/s0.jpg 2", "images/s0.jpg 2"])
    with pytest.warns(UserWarning, match=r"test.txt:2 repeats .*test.txt:1; the image is kept"):
        ds = Vtab1kDataset.from_path(vtab_task)
    assert [ds.samples[r].source for r in ds.split_indices()["test"]] == ["images/s0.jpg"]


def test_conflicting_labels_within_a_split(vtab_task: Path) -> None:
    write_lines(vtab_task / "test.txt", ["images/s0.jpg 2", "images/s0.jpg 1"])
    with pytest.raises(DatasetError, match=r"test.txt:2.*label 1 but label 2 at .*test.txt:1"):
        Vtab1kDataset.from_path(vtab_task)


def test_conflicting_labels_across_splits(vtab_task: Path) -> None:
    write_lines(vtab_task / "test.txt", ["images/t0.jpg 2"])  # t0 is label 0 in train800
    with pytest.raises(DatasetError, match=r"test.txt:1.*label 2 but label 0.*train800.txt:1"):
        Vtab1kDataset.from_path(vtab_task)


def test_missing_split_file(vtab_task: Path) -> None:
    (vtab_task / "test.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing .*test\.txt"):
        get_dataset(f"vtab1k:{vtab_task}")


def test_missing_task_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"not found: .*nope.*train800\.txt"):
        get_dataset(f"vtab1k:{tmp_path / 'nope'}")


def test_relative_spec_resolved_against_data_root(vtab_task: Path) -> None:
    ds = get_dataset("vtab1k:dtd", data_root=vtab_task.parent)
    assert ds.root == str(vtab_task.resolve()) and len(ds) == 7
