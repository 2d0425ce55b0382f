"""Generated VTAB-style tasks: readable by the vtab1k adapter, deterministic, labels correct."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from losa_cache.data import get_dataset
from losa_cache.pipelines import vtab_tasks as vt


def pixels(task: Path, rel: str) -> np.ndarray:
    with Image.open(task / rel) as im:
        return np.asarray(im)


def tree_md5(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cifar(shared_data: Path) -> Iterator[vt.CifarTest]:
    source = vt.CifarTest(shared_data / vt.CIFAR_TAR)
    yield source
    source.close()


@pytest.mark.parametrize("name", list(vt.TASKS))
def test_adapter_reads_task(tiny_tasks: Path, tiny_sizes: dict[str, int], name: str) -> None:
    ds = get_dataset(f"vtab1k:{tiny_tasks / name}")
    sizes = {s: len(rows) for s, rows in ds.split_indices().items()}
    n_train, n_val = tiny_sizes["train_size"], tiny_sizes["val_size"]
    assert sizes == {"train800": n_train, "val200": n_val, "test": tiny_sizes["test_size"],
                     "train800val200": n_train + n_val}  # fmt: skip
    assert ds.classes == list(vt.TASKS[name].classnames)
    for split, rows in ds.split_indices().items():
        counts = np.bincount([ds.samples[r].label for r in rows], minlength=len(ds.classes))
        assert counts.max() - counts.min() <= 1, (split, counts)  # balanced
    image = ds.load(ds.split_indices()["test"][0])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_manifest(tiny_tasks: Path, shared_data: Path) -> None:
    doc = json.loads((tiny_tasks / vt.MANIFEST).read_text())
    assert doc["seed"] == 0 and set(doc["tasks"]) == set(vt.TASKS)
    assert doc["sizes"] == {"train": 27, "val": 9, "test": 18}
    assert set(doc["sources"]) == {vt.CIFAR_TAR, vt.MNIST_IMAGES, vt.MNIST_LABELS}
    assert (
        doc["sources"][vt.MNIST_IMAGES]
        == hashlib.md5((shared_data / vt.MNIST_IMAGES).read_bytes()).hexdigest()
    )


def test_deterministic(
    tiny_tasks: Path,
    tmp_path: Path,
    build_tiny: Callable[..., Path],
    shared_data: Path,
    tiny_sizes: dict[str, int],
) -> None:
    again = build_tiny(tmp_path / "again")
    assert tree_md5(again) == tree_md5(tiny_tasks)
    other = vt.build_tasks(
        tmp_path / "seed1", shared_data, seed=1, tasks=["rotation"], **tiny_sizes
    )
    assert (
        other["tasks"]["rotation"]["list_md5"]
        != json.loads((tiny_tasks / vt.MANIFEST).read_text())["tasks"]["rotation"]["list_md5"]
    )


@pytest.mark.parametrize("name", list(vt.TASKS))
def test_train_and_test_sources_disjoint(tiny_tasks: Path, name: str) -> None:
    used: dict[bool, set[str]] = {True: set(), False: set()}
    for path, _, source, _ in vt.read_provenance(tiny_tasks / name):
        used[path.startswith("images/test/")].update(source.split(","))
    assert used[True] and used[False] and not used[True] & used[False]


def test_rotation_labels(tiny_tasks: Path, cifar: vt.CifarTest) -> None:
    task = tiny_tasks / "rotation"
    for path, label, source, params in vt.read_provenance(task):
        assert params == {"k": label}
        np.testing.assert_array_equal(np.rot90(pixels(task, path), -label), cifar.load(source))


def test_location_labels(tiny_tasks: Path, cifar: vt.CifarTest) -> None:
    task = tiny_tasks / "location"
    for path, label, source, p in vt.read_provenance(task):
        row, col = round(p["y"] / 10), round(p["x"] / 10)  # nearest grid cell of the paste
        assert label == 3 * row + col
        patch = pixels(task, path)[p["y"] : p["y"] + 12, p["x"] : p["x"] + 12]
        np.testing.assert_array_equal(patch, vt.shrink(cifar.load(source), 12))


def test_count_labels(tiny_tasks: Path, cifar: vt.CifarTest) -> None:
    task = tiny_tasks / "count"
    for path, label, sources, p in vt.read_provenance(task):
        names = sources.split(",")
        assert len(names) == len(p["cells"]) == label + 1 == len(set(p["cells"]))
        image = pixels(task, path)
        for name, cell in zip(names, p["cells"], strict=True):
            y, x = (1 + 10 * c for c in divmod(cell, 3))
            np.testing.assert_array_equal(
                image[y : y + 10, x : x + 10], vt.shrink(cifar.load(name), 10)
            )


def test_digits_are_padded_mnist(tiny_tasks: Path, shared_data: Path) -> None:
    images = vt.read_idx(shared_data / vt.MNIST_IMAGES)
    labels = vt.read_idx(shared_data / vt.MNIST_LABELS)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    task = tiny_tasks / "digits"
    for path, label, source, _ in vt.read_provenance(task):
        index = int(source.split("#")[1])
        assert labels[index] == label
        image = pixels(task, path)
        assert (image[..., 0] == image[..., 2]).all()
        np.testing.assert_array_equal(image[2:30, 2:30, 1], images[index])


def test_cli_and_overwrite_rules(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--data", str(shared_data), "--tasks", "rotation",
            "--train-size", "4", "--val-size", "4", "--test-size", "4"]  # fmt: skip
    vt.main(args)
    vt.main(args)  # a folder this script made is replaced
    assert len(list((out / "rotation" / "images" / "test").iterdir())) == 4
    assert "rotation" in capsys.readouterr().out
    (out / "foreign").mkdir()
    (out / "foreign" / "train800.txt").write_text("")
    with pytest.raises(FileExistsError, match="not made by this script"):
        vt._replace(out / "rotation", out / "foreign")
    with pytest.raises(ValueError, match="unknown task"):
        vt.build_tasks(out, shared_data, tasks=["dtd"])
    with pytest.raises(ValueError, match="ran out of MNIST"):
        vt.build_tasks(out, shared_data, tasks=["digits"], train_size=9000, val_size=1)
