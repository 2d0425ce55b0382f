"""Split sizes for planning a store (bytes, extraction time) before the data is there."""

from __future__ import annotations

from pathlib import Path

from losa_cache.data import demo
from losa_cache.data.base import DatasetError, DatasetNotFoundError
from losa_cache.data.registry import ADAPTERS, get_dataset

#: Official split sizes. ``vtab1k`` holds the sizes every task shares; its test split varies
#: by task (hundreds to tens of thousands of images), so it is left out rather than guessed.
KNOWN_SIZES: dict[str, dict[str, int]] = {
    "demo": dict(demo.SIZES),
    "inat2018": {"train": 437_513, "val": 24_426},
    "inat2021": {"train": 2_686_843, "val": 100_000},
    "vtab1k": {"train800": 800, "val200": 200, "train800val200": 1_000},
    "cifar10": {"train": 50_000, "test": 10_000},
    "imagenet1k": {"train": 1_281_167, "val": 50_000},
    # clips named by DeepMind's CSVs (copies on disk are a few percent short: takedowns);
    # the Kinetics-600/700 test splits are left out rather than guessed
    "kinetics400": {"train": 246_534, "val": 19_906, "test": 38_685},
    "kinetics600": {"train": 392_622, "val": 30_001},
    "kinetics700": {"train": 545_317, "val": 35_000},
}


def dataset_sizes(spec: str, data_root: str | Path | None = None) -> dict[str, int]:
    """Rows per split: counted from the data when it is there, else :data:`KNOWN_SIZES`.

    Data that is present but malformed raises (a silent fallback would hide it).
    """
    name = spec.strip().partition(":")[0].lower()
    missing: DatasetError | None = None
    if name in ADAPTERS:
        try:
            ds = get_dataset(spec, data_root)
            return {split: len(rows) for split, rows in ds.split_indices().items()}
        except DatasetNotFoundError as err:
            missing = err
    if name in KNOWN_SIZES:
        return dict(KNOWN_SIZES[name])
    known = ", ".join(sorted(KNOWN_SIZES))
    reason = f"{missing}; " if missing else ""
    raise DatasetError(f"no sizes for {spec!r}: {reason}known without data: {known}")
