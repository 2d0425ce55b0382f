"""list:FILE: comments, optional split column, relative/absolute paths, errors with line numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from losa_cache.data import DatasetError, ListFileDataset, get_dataset

if TYPE_CHECKING:
    from tests.data.conftest import WriteImage


def _list(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "lists" / "mine.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rows_splits_and_comments(tmp_path: Path, write_image: WriteImage) -> None:
    absolute = write_image(tmp_path / "elsewhere" / "abs.png")
    write_image(tmp_path / "lists" / "img" / "a.png")
    write_image(tmp_path / "lists" / "img" / "b c.png")
    path = _list(
        tmp_path,
        [
            "# my images",
            "img/a.png 1",
            "",
            "  img/b c.png 0 val  ",
            f"{absolute} 1 test",
            "./img/a.png 1 trainval",  # same image in a second split: same row
            "img/new.png -1 predict",
        ],
    )
    ds = get_dataset(f"list:{path}")
    assert isinstance(ds, ListFileDataset)
    assert [(s.source, s.label, s.split) for s in ds.samples] == [
        ("img/a.png", 1, "train"),
        ("img/b c.png", 0, "val"),
        (str(absolute), 1, "test"),
        ("img/new.png", -1, "predict"),
    ]
    assert ds.split_indices() == {
        "train": [0], "val": [1], "test": [2], "trainval": [0], "predict": [3]
    }  # fmt: skip
    assert ds.classes == ["0", "1"]
    assert ds.load(1).size == ds.load(2).size == (8, 6)
    assert get_dataset(f"list:{path}") == ds  # deterministic


def test_relative_to_data_root(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "lists" / "x.png")
    _list(tmp_path, ["x.png 0"])
    assert len(get_dataset("list:lists/mine.txt", data_root=tmp_path)) == 1


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("lonely.png", "expected '<path> <label>'"),
        ("a.png cat", "expected '<path> <label>'"),
        ("a.png -3", r"label must be >= 0 \(or -1"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    path = _list(tmp_path, ["# header", "ok.png 0", line])
    with pytest.raises(DatasetError, match=match) as info:
        ListFileDataset.from_file(path)
    assert f"{path}:3" in str(info.value)


def test_empty_and_missing_list(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="lists no images"):
        ListFileDataset.from_file(_list(tmp_path, ["# nothing", ""]))
    with pytest.raises(DatasetError, match=r"list file not found: .*absent\.txt"):
        get_dataset(f"list:{tmp_path / 'absent.txt'}")
