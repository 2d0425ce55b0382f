"""The built-in demo set: sizes, balance, determinism, and that the classes mean something."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from losa_cache.data import DemoDataset, get_dataset
from losa_cache.data.demo import CLASSES, QUADRANTS, SIZES, _shape_mask, render


@pytest.fixture(scope="module")
def demo() -> DemoDataset:
    return DemoDataset.create()


def test_sizes_splits_and_sources(demo: DemoDataset) -> None:
    sizes = {split: len(rows) for split, rows in demo.split_indices().items()}
    assert sizes == SIZES == {"train": 1600, "val": 320, "test": 480}
    assert len(demo.classes) == 8 and demo.classes == CLASSES
    assert demo.samples[0].source == "demo://train/000000"
    assert demo.samples[1600].source == "demo://val/000000"


def test_classes_exactly_balanced_in_every_split(demo: DemoDataset) -> None:
    for split, rows in demo.split_indices().items():
        counts = Counter(demo.samples[i].label for i in rows)
        assert set(counts.values()) == {SIZES[split] // len(CLASSES)}, split


def test_images_are_32px_rgb_and_whole_set_is_fast(demo: DemoDataset) -> None:
    start = time.perf_counter()
    images = [demo.load(i) for i in range(len(demo))]
    assert time.perf_counter() - start < 3.0
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
def test_every_shape_stays_inside_its_quadrant(kind: str) -> None:
    """The label's "where" is exact: no shape ever crosses into another quadrant."""
    rng = np.random.default_rng(0)
    for quadrant in range(len(QUADRANTS)):
        outside = np.ones((32, 32), dtype=bool)
        top, left = 16 * (quadrant // 2), 16 * (quadrant % 2)
        outside[top : top + 16, left : left + 16] = False
        for _ in range(50):
            mask = _shape_mask(rng, kind, quadrant)
            assert mask.sum() >= 12 and not (mask & outside).any()


def test_load_out_of_range(demo: DemoDataset) -> None:
    with pytest.raises(IndexError):
        demo.load(len(demo))
