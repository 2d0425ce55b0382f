"""TorchImages: bad images come back as ok=False zero tensors; the wrapper pickles."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from losa_cache.data import TorchImages, get_dataset

if TYPE_CHECKING:
    from tests.data.conftest import WriteImage

TRANSFORM = transforms.Compose([transforms.Resize((4, 4)), transforms.ToTensor()])


@pytest.fixture
def images(tmp_path: Path, write_image: WriteImage) -> TorchImages:
    """Rows: a/bad.jpg (not an image), a/good.png, b/good.png; TorchImages over all three."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.jpg").write_bytes(b"garbage")
    write_image(tmp_path / "a" / "good.png")
    write_image(tmp_path / "b" / "good.png", size=(5, 5))
    ds = get_dataset(f"imagefolder:{tmp_path}")
    return TorchImages(ds, TRANSFORM, rows=[2, 0, 1])


def test_items_and_corrupt_file(images: TorchImages) -> None:
    assert len(images) == 3
    tensor, row, ok, error = images[0]
    assert (tensor.shape, row, ok, error) == ((3, 4, 4), 2, True, "")
    tensor, row, ok, error = images[1]
    assert (row, ok) == (0, False)
    assert torch.equal(tensor, torch.zeros(3, 4, 4)) and "bad.jpg" in error


def test_dataloader_collates_failures(images: TorchImages) -> None:
    batch = next(iter(DataLoader(images, batch_size=3)))
    x, rows, ok, errors = batch
    assert x.shape == (3, 3, 4, 4)
    assert rows.tolist() == [2, 0, 1] and ok.tolist() == [True, False, True]
    assert errors[0] == "" and "cannot identify" in errors[1]


def test_transform_failure_is_reported_not_raised(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "a" / "x.png")

    def picky(image: object) -> torch.Tensor:
        if getattr(image, "size", None) == (8, 6):
            raise ValueError("too small")
        return torch.zeros(2)

    _, _, ok, error = TorchImages(get_dataset(f"imagefolder:{tmp_path}"), picky, rows=[0])[0]
    assert not ok and "transform failed on 'a/x.png'" in error and "too small" in error


def test_pickles(images: TorchImages) -> None:
    clone = pickle.loads(pickle.dumps(images))
    assert clone[1][2] is False and torch.equal(clone[0][0], images[0][0])


def test_spawn_workers() -> None:
    ds = TorchImages(get_dataset("demo"), transforms.ToTensor(), rows=range(8))
    ctx = multiprocessing.get_context("spawn")
    loader = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context=ctx)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batches[0][0].shape == (4, 3, 32, 32) and all(b[2].all() for b in batches)
