"""The built-in demo set: sizes, balance, determinism, and that the classes mean something."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from losa_cache.data import DemoDataset, get_dataset
from losa_cache.data.demo import CLASSES, GRID, SIZES, _shape_mask, render


@pytest.fixture(scope="module")
def demo() -> DemoDataset:
    return DemoDataset.create()


def test_sizes_splits_and_sources(demo: DemoDataset) -> None:
    sizes = {split: len(rows) for split, rows in demo.split_indices().items()}
    assert sizes == SIZES == {"train": 1800, "val": 450, "test": 900}
    assert len(demo.classes) == 9 and demo.classes == CLASSES and demo.task == "position"
    assert demo.samples[0].source == "demo://train/000000"
    assert demo.samples[1800].source == "demo://val/000000"


def test_classes_exactly_balanced_in_every_split(demo: DemoDataset) -> None:
    for split, rows in demo.split_indices().items():
        counts = Counter(demo.samples[i].label for i in rows)
        assert set(counts.values()) == {SIZES[split] // len(CLASSES)}, split


def test_every_image_is_32px_rgb(demo: DemoDataset) -> None:
    # no wall-clock limit here: speed is for benchmarks (a loaded CI box failed it)
    images = [demo.load(i) for i in range(len(demo))]
    assert {(im.mode, im.size) for im in images} == {("RGB", (32, 32))}


def test_deterministic_per_row_and_seed(demo: DemoDataset) -> None:
    again = get_dataset("demo")
    assert again.samples == demo.samples
    for i in (0, 17, 2399):
        assert np.array_equal(np.asarray(demo.load(i)), np.asarray(again.load(i)))
    other = get_dataset("demo:1")
    assert other.samples != demo.samples
    assert not np.array_equal(np.asarray(demo.load(5)), np.asarray(other.load(5)))


def test_pixels_differ_between_classes() -> None:
    first = [render(np.random.default_rng(7), label) for label in range(len(CLASSES))]
    for a in range(len(CLASSES)):
        for b in range(a + 1, len(CLASSES)):
            assert np.abs(first[a].astype(int) - first[b]).mean() > 1.0, (a, b)


@pytest.mark.parametrize("kind", ["circle", "square", "triangle", "plus"])
def test_every_shape_stays_inside_its_cell(kind: str) -> None:
    """The label's "where" is exact: no shape ever crosses into another grid cell."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    cell_of = (yy * GRID // 32) * GRID + xx * GRID // 32  # the cell each pixel lies in
    for cell in range(GRID * GRID):
        for _ in range(50):
            mask = _shape_mask(rng, kind, cell)
            assert mask.sum() >= 10 and (cell_of[mask] == cell).all(), (kind, cell)


def test_load_out_of_range(demo: DemoDataset) -> None:
    with pytest.raises(IndexError):
        demo.load(len(demo))
