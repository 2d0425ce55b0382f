"""imagefolder: flat and split layouts, sorting, extensions, and every layout error."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from losa_cache.data import DatasetError, ImageFolderDataset, get_dataset

if TYPE_CHECKING:
    from tests.data.conftest import WriteImage


def _flat(root: Path, write_image: WriteImage) -> Path:
    # created out of order: rows must come out sorted anyway
    for rel in ["zebra/2.png", "zebra/10.PNG", "ant/b.JPG", "ant/sub/a.jpeg", "ant/a.png"]:
        write_image(root / rel)
    (root / "ant" / "notes.txt").write_text("not an image")
    write_image(root / "ant" / ".hidden.png")
    return root


def test_flat_layout(tmp_path: Path, write_image: WriteImage) -> None:
    ds = get_dataset(f"imagefolder:{_flat(tmp_path / 'pets', write_image)}")
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ["ant", "zebra"]
    assert [(s.source, s.label, s.split) for s in ds.samples] == [
        ("ant/a.png", 0, "train"),
        ("ant/b.JPG", 0, "train"),
        ("ant/sub/a.jpeg", 0, "train"),
        ("zebra/10.PNG", 1, "train"),
        ("zebra/2.png", 1, "train"),
    ]
    assert ds.split_indices() == {"train": [0, 1, 2, 3, 4]}
    assert ds.task == "pets" and ds.meta["layout"] == "flat"
    im = ds.load(2)
    assert (im.mode, im.size) == ("RGB", (8, 6))


def test_split_layout_union_of_classes(tmp_path: Path, write_image: WriteImage) -> None:
    root = tmp_path / "data"
    for rel in ["train/b/1.png", "train/a/1.png", "validation/c/1.png", "test/b/2.png"]:
        write_image(root / rel)
    ds = get_dataset(f"imagefolder:{root}")
    assert ds.classes == ["a", "b", "c"]
    assert [(s.source, s.label, s.split) for s in ds.samples] == [
        ("train/a/1.png", 0, "train"),
        ("train/b/1.png", 1, "train"),
        ("validation/c/1.png", 2, "val"),
        ("test/b/2.png", 1, "test"),
    ]
    assert ds.splits == ["train", "val", "test"]


def test_empty_class_folder_keeps_its_index(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "b" / "1.png")
    (tmp_path / "a").mkdir()
    ds = ImageFolderDataset.from_path(tmp_path)
    assert ds.classes == ["a", "b"] and ds.samples[0].label == 1
    assert ds.meta["empty_classes"] == ["a"]


def test_deterministic(tmp_path: Path, write_image: WriteImage) -> None:
    root = _flat(tmp_path / "pets", write_image)
    assert get_dataset(f"imagefolder:{root}") == get_dataset(f"imagefolder:{root}")


def _layout_error(root: Path, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        get_dataset(f"imagefolder:{root}")
    assert str(root) in str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    _layout_error(tmp_path / "nope", "not found")


def test_path_is_a_file(tmp_path: Path, write_image: WriteImage) -> None:
    _layout_error(write_image(tmp_path / "x.png"), "must be a folder")


def test_no_class_folders(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "loose.png")
    _layout_error(tmp_path, "no class folders")


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("x")
    _layout_error(tmp_path, "no images")


def test_val_and_validation_both_present(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "val" / "a" / "1.png")
    write_image(tmp_path / "validation" / "a" / "1.png")
    _layout_error(tmp_path, "keep one")


def test_split_folders_mixed_with_others(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "train" / "a" / "1.png")
    write_image(tmp_path / "extras" / "a" / "1.png")
    _layout_error(tmp_path, "extras")
