"""hf:PATH: save_to_disk folders and parquet give the imagefolder's rows, labels, splits and
features; ClassLabel names are the classes; non-images skipped with reasons; one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from losa_cache.data import get_dataset
from losa_cache.data.base import DatasetError, ImageDecodeError
from losa_cache.extract import ExtractConfig, extract
from tests._packed_sets import EXTRACT, same_store_content

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data_wds import killed_then_resumed_equals_clean


@pytest.mark.parametrize("form", ["hf", "parquet"])
def test_rows_equal_the_imagefolder_of_the_same_images(packed_sets: dict, form: str) -> None:
    folder = get_dataset(packed_sets["specs"]["imagefolder"])
    hf = get_dataset(packed_sets["specs"][form])
    assert hf.classes == folder.classes  # the ClassLabel's names
    assert hf.table.labels.tolist() == folder.table.labels.tolist()
    assert hf.split_indices() == folder.split_indices()  # validation -> val
    assert [s.source for s in hf.samples[:2]] == ["train/0", "train/1"]
    for row in range(len(folder)):
        np.testing.assert_array_equal(np.asarray(hf.load(row)), np.asarray(folder.load(row)))
    assert hf.meta["image_column"] == "img" and hf.meta["label_column"] == "fine"


@pytest.mark.parametrize("form", ["wds", "hf", "parquet"])
def test_extracted_store_equals_the_imagefolder_store(
    packed_sets: dict, packed_reference: str, tmp_path: Path, form: str
) -> None:
    """The acceptance check: same images, same features bit for bit, labels and splits."""
    path = str(tmp_path / f"{form}.zarr")
    extract(ExtractConfig(dataset=packed_sets["specs"][form], store=path, **EXTRACT),
            progress=False)  # fmt: skip
    same_store_content(path, packed_reference)


@pytest.mark.parametrize("form", ["wds", "hf", "parquet"])
def test_rows_decode_the_same_after_pickling(packed_sets: dict, form: str) -> None:
    """Decoding workers get the adapter pickled: no open file or dataset travels."""
    import pickle

    ds = get_dataset(packed_sets["specs"][form])
    ds.load(0)  # opens files in this process
    copy = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 20_000
    for row in (0, len(ds) - 1):
        np.testing.assert_array_equal(np.asarray(copy.load(row)), np.asarray(ds.load(row)))


def small_dict(images: list, labels: list[int], names: list[str], split: str = "train"):
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=names),
                                  "id": datasets.Value("int64")})  # fmt: skip
    rows = {"image": images, "label": labels, "id": list(range(len(labels)))}
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)})


def test_a_non_image_cell_is_a_skipped_row_with_its_reason(packed_sets: dict, tmp_path) -> None:
    good = [im.png for im in packed_sets["sets"].images[:3]]
    cells = [{"bytes": good[0], "path": None}, {"bytes": b"plain text, no image", "path": None},
             {"bytes": good[1], "path": None}, None]  # fmt: skip
    small_dict(cells, [0, 1, 0, 1], ["a", "b"]).save_to_disk(str(tmp_path / "d"))
    ds = get_dataset(f"hf:{tmp_path / 'd'}")
    assert ds.classes == ["a", "b"] and ds.table.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ImageDecodeError, match=r"train/1.*cannot identify image"):
        ds.load(1)
    with pytest.raises(ImageDecodeError, match="column 'image' holds empty, not an image"):
        ds.load(3)
    store = str(tmp_path / "s.zarr")
    result = extract(ExtractConfig(dataset=f"hf:{tmp_path / 'd'}", store=store, **EXTRACT),
                     progress=False)  # fmt: skip
    assert sorted(s["source"] for s in result.skipped) == ["train/1", "train/3"]


def test_columns_that_are_not_there_or_not_images_are_one_line(packed_sets: dict) -> None:
    spec = packed_sets["specs"]["hf"]
    with pytest.raises(DatasetError, match=r"no column 'label' \(label-column=\)") as e:
        get_dataset(f"{spec},label-column=label")
    assert "\n" not in str(e.value) and "'fine'" in str(e.value)
    with pytest.raises(DatasetError, match=r"column 'fine' holds ClassLabel, not images"):
        get_dataset(f"{spec},image-column=fine")
    with pytest.raises(DatasetError, match=r"unknown option colour="):
        get_dataset(f"{spec},colour=red")
    unlabelled = get_dataset(f"{spec},label-column=none")
    assert set(unlabelled.table.labels.tolist()) == {-1}


def test_a_missing_split_is_one_line(packed_sets: dict, tmp_path: Path) -> None:
    good = [{"bytes": im.png, "path": None} for im in packed_sets["sets"].images[:4]]
    small_dict(good, [0, 1, 0, 1], ["a", "b"], split="test").save_to_disk(str(tmp_path / "d"))
    spec = f"hf:{tmp_path / 'd'}"
    assert get_dataset(spec).splits == ["test"]
    wanted = r"unknown split\(s\) \['val'\]; the data set has \['test'\]"
    with pytest.raises(ValueError, match=wanted):
        extract(ExtractConfig(dataset=spec, store=str(tmp_path / "s.zarr"), splits=["val"],
                              **EXTRACT), progress=False)  # fmt: skip


def test_image_paths_and_integer_labels_from_parquet(packed_sets: dict, tmp_path: Path) -> None:
    """A string column of relative paths and plain int labels (no ClassLabel)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = get_dataset(packed_sets["specs"]["imagefolder"])
    (tmp_path / "data").mkdir()
    rel = [f"../{s.source}" for s in folder.samples[:4]]
    for s in folder.samples[:4]:
        target = tmp_path / s.source
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((packed_sets["sets"].folder / s.source).read_bytes())
    table = pa.table({"file": [*rel, "../nope.png"], "label": [5, 7, 5, 9, 7]})
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    ds = get_dataset(f"hf:{tmp_path / 'data'},image-column=file")
    assert ds.splits == ["test"] and ds.classes == ["5", "7", "9"]
    assert ds.table.labels.tolist() == [0, 1, 0, 2, 1]
    for row in range(4):
        np.testing.assert_array_equal(np.asarray(ds.load(row)), np.asarray(folder.load(row)))
    with pytest.raises(ImageDecodeError, match=r"nope\.png the row names is missing"):
        ds.load(4)
    ds.max_file_bytes = 10  # get_dataset's max_file_bytes, where it has one
    with pytest.raises(ImageDecodeError, match=r"bytes is over the limit of 10 "):
        ds.load(0)


def test_parquet_through_fsspec_memory_urls(packed_sets: dict) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for f in sorted((packed_sets["root"] / "pq").glob("*.parquet")):
        fs.pipe(f"/hf-test/{f.name}", f.read_bytes())
    try:
        remote = get_dataset("hf:memory://hf-test")
        local = get_dataset(packed_sets["specs"]["parquet"])
        assert remote.split_indices() == local.split_indices()
        assert remote.classes == local.classes
        for row in range(len(local)):
            np.testing.assert_array_equal(np.asarray(remote.load(row)),
                                          np.asarray(local.load(row)))  # fmt: skip
    finally:
        fs.rm("/hf-test", recursive=True)


def test_missing_package_names_the_extra(packed_sets: dict, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DatasetError, match=r"pip install 'losa-cache\[hf\]'"):
        get_dataset(packed_sets["specs"]["hf"])


def test_killed_extraction_resumes_to_the_same_store(packed_sets: dict, tmp_path: Path) -> None:
    """save_to_disk; parquet rows are addressed the same way (part, row)."""
    killed_then_resumed_equals_clean(packed_sets["specs"]["hf"], tmp_path)
