"""Label files as users write them: BOMs, other encodings, numbers that are not integers,
repeated and conflicting lines, one-class data sets, and huge images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from losa_cache.data import DatasetError, ImageDecodeError, get_dataset
from losa_cache.data.files import LabelLine, unique_label_lines

if TYPE_CHECKING:
    from tests.data.conftest import WriteImage


def _list(tmp_path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path = tmp_path / "mine.txt"
    path.write_bytes("".join(f"{line}\n" for line in lines).encode(encoding))
    return path


def test_utf8_bom_is_stripped(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    path = _list(tmp_path, ["a.png 0", "b.png 1"], encoding="utf-8-sig")
    ds = get_dataset(f"list:{path}")
    assert [s.source for s in ds.samples] == ["a.png", "b.png"]
    assert ds.load(0).size == (8, 6)


def test_non_utf8_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = _list(tmp_path, ["a.png 0", "café.png 1"], encoding="latin-1")
    with pytest.raises(DatasetError, match=r"mine\.txt:2: not UTF-8 text.*save the file as UTF-8"):
        get_dataset(f"list:{path}")


@pytest.mark.parametrize(
    "line", ["a.png 1.5", "a.png 1e3", "a.png 1 1.5", "a.png 2.0 train", "a.png 1_000", "a.png .5"]
)
def test_numbers_that_are_not_integers_are_refused(tmp_path: Path, line: str) -> None:
    path = _list(tmp_path, ["ok.png 0", line])
    with pytest.raises(DatasetError, match=r"mine\.txt:2: label must be an integer"):
        get_dataset(f"list:{path}")


def test_integer_labels_with_split_names_still_parse(tmp_path: Path) -> None:
    path = _list(tmp_path, ["my 2.5 photo.png 1", "b.png 0 val", "c.png +1 test"])
    rows = [(s.source, s.label, s.split) for s in get_dataset(f"list:{path}").samples]
    assert rows == [("my 2.5 photo.png", 1, "train"), ("b.png", 0, "val"), ("c.png", 1, "test")]


def test_conflicting_duplicate_lines_name_both(tmp_path: Path) -> None:
    path = _list(tmp_path, ["a.png 0", "b.png 1", "./a.png 1"])
    with pytest.raises(
        DatasetError,
        match=r"mine\.txt:3: 'a.png' has label 1 but label 0 at "
        r".*mine\.txt:1",
    ):
        get_dataset(f"list:{path}")


def test_identical_duplicate_lines_are_kept_once(tmp_path: Path) -> None:
    path = _list(tmp_path, ["a.png 0", "b.png 1", "a.png 0", "b.png 1"])
    with pytest.warns(UserWarning, match=r"mine\.txt:3 repeats .*mine\.txt:1.*1 more"):
        ds = get_dataset(f"list:{path}")
    assert [s.source for s in ds.samples] == ["a.png", "b.png"]
    assert ds.split_indices() == {"train": [0, 1]}


def test_label_lines_dedupe_and_refuse() -> None:
    lines = [
        LabelLine("a", "cat", "f:1"),
        LabelLine("b", "dog", "f:2"),
        LabelLine("a", "cat", "f:3"),
    ]
    with pytest.warns(UserWarning, match="f:3 repeats f:1"):
        assert unique_label_lines(lines) == lines[:2]
    with pytest.raises(DatasetError, match=r"f:2: 'a' has label 'dog' but 'cat' at f:1"):
        unique_label_lines([LabelLine("a", "cat", "f:1"), LabelLine("a", "dog", "f:2")])


def test_single_class_data_set_warns(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "pets" / "cat" / "1.png")
    write_image(tmp_path / "pets" / "cat" / "2.png")
    with pytest.warns(UserWarning, match=r"every labelled image has class 'cat'"):
        get_dataset(f"imagefolder:{tmp_path / 'pets'}")
    path = _list(tmp_path, ["a.png -1", "b.png -1"])  # images to predict on: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_dataset(f"list:{path}")


def test_conflicting_inat_annotations_are_refused(inat_root: Path) -> None:
    doc = json.loads((inat_root / "train2018.json").read_text())
    doc["annotations"].append({"id": 999, "image_id": 11, "category_id": 2})
    (inat_root / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(
        DatasetError,
        match=r"image 11 is annotated as category 7 \(annotation "
        r"111\) and as category 2 \(annotation 999\)",
    ):
        get_dataset(f"inat2018:{inat_root}")


def test_inat_without_root_names_the_real_flag() -> None:
    with pytest.raises(DatasetError, match="pass --data-root DIR"):
        get_dataset("inat2018")


def test_max_pixels_reaches_the_decoder(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "a.png", size=(10, 10))
    write_image(tmp_path / "b.png")
    path = _list(tmp_path, ["a.png 0", "b.png 1"])
    ds = get_dataset(f"list:{path}", max_pixels=99)
    with pytest.raises(ImageDecodeError, match=r"100 pixels is over the limit of 99.*--max-pixels"):
        ds.load(0)
    assert ds.load(1).size == (8, 6)
    assert get_dataset(f"list:{path}").load(0).size == (10, 10)
    with pytest.raises(DatasetError, match="max_pixels must be >= 1"):
        get_dataset(f"list:{path}", max_pixels=0)


def test_task_label_files_get_the_same_rules(tmp_path: Path) -> None:
    """`tasks add --labels FILE` reads its file with these rules too."""
    from losa_cache.store.tasks import read_label_file

    bom = _list(tmp_path, ["a.png cat", "b.png dog"], encoding="utf-8-sig")
    assert read_label_file(bom) == [("a.png", "cat"), ("b.png", "dog")]
    with pytest.raises(DatasetError, match=r"mine\.txt:2: not UTF-8"):
        read_label_file(_list(tmp_path, ["a.png cat", "b.png café"], encoding="latin-1"))
    with pytest.raises(ValueError, match=r"mine\.txt:2: label must be an integer.*'1e3'"):
        read_label_file(_list(tmp_path, ["a.png 1", "b.png 1e3"]))
    with pytest.raises(DatasetError, match=r"mine\.txt:3: 'a.png' has label 'dog' but 'cat'"):
        read_label_file(_list(tmp_path, ["a.png cat", "b.png dog", "a.png dog"]))
    with pytest.warns(UserWarning, match=r"mine\.txt:3 repeats .*mine\.txt:1"):
        pairs = read_label_file(_list(tmp_path, ["a.png cat", "b.png dog", "a.png cat"]))
    assert pairs == [("a.png", "cat"), ("b.png", "dog")]
    with pytest.warns(UserWarning, match="every labelled image has class 'cat'"):
        read_label_file(_list(tmp_path, ["a.png cat", "b.png cat"]))


def test_inat_json_with_a_bom_parses(inat_root: Path) -> None:
    path = inat_root / "train2018.json"
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-8-sig"))
    assert len(get_dataset(f"inat2018:{inat_root}")) == 4


def test_unreadable_folder_is_a_clear_error(
    tmp_path: Path, write_image: WriteImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image(tmp_path / "pets" / "cat" / "1.png")

    def refuse(self: Path):  # what a folder without read permission does (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(DatasetError, match=r"cannot list the folder .*pets: Permission denied"):
        get_dataset(f"imagefolder:{tmp_path / 'pets'}")
