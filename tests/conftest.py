"""Shared fixtures: tiny backbones, the embedded demo data, small stores."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

torch.set_num_threads(1)  # tiny models: OpenMP threads only contend on 2 shared cores

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def load_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """``load_benchmark("train")``: benchmarks/train.py as a module, its results going to
    tmp_path instead of benchmarks/results (the scripts are not a package: path + spec)."""

    def load(name: str) -> ModuleType:
        monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys.modules["_common"], "RESULTS", tmp_path)
        return module

    return load


@pytest.fixture(scope="session")
def micro_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A complete fp32 store of the demo data set (first 64 rows per split) from vit_micro."""
    from losa_cache.extract import ExtractConfig, extract

    path = str(tmp_path_factory.mktemp("stores") / "micro.zarr")
    extract(
        ExtractConfig(
            model="vit_micro",
            random_init=True,
            dataset="demo",
            store=path,
            dtype="float32",
            limit=64,
            workers=0,
            chunk_rows=16,
            shard_rows=32,
        ),
        progress=False,
    )
    return path


def write_photos(root: Path, counts: dict[str, int], splits: tuple[str, ...] = ()) -> Path:
    """A folder of tiny JPEGs, ``root/<class>/<i>.jpg`` (or ``root/<split>/<class>/...`` for
    each of ``splits``): ``counts[class]`` images per class (and split), each class its own
    colour plus noise, so a classifier can tell them apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for s in splits or ("",):
        for c, (name, n) in enumerate(counts.items()):
            folder = root / s / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[c % 3] = 200
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 25, (12, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``photos/<class>/*.jpg``: 3 classes of 12, 8 and 20 images, no split folders."""
    return write_photos(tmp_path_factory.mktemp("photos") / "photos",
                        {"cat": 12, "dog": 8, "owl": 20})  # fmt: skip


@pytest.fixture(scope="session")
def photo_store(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """vit_micro store of ``photos`` with val and test carved by ``--split val=0.25,test=5``."""
    from losa_cache.extract import ExtractConfig, extract

    path = str(tmp_path_factory.mktemp("stores") / "photos.zarr")
    extract(ExtractConfig(model="vit_micro", random_init=True, dataset=f"imagefolder:{photos}",
                          store=path, dtype="float32", workers=0, split="val=0.25,test=5",
                          chunk_rows=4, shard_rows=8), progress=False)  # fmt: skip
    return path


@pytest.fixture(scope="session")
def make_photos() -> Callable[..., Path]:
    """``make_photos(root, {class: n}, splits=())``: :func:`write_photos`."""
    return write_photos


@pytest.fixture(scope="session")
def plain_photo_store(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """vit_micro store of ``photos`` as the folder gives it: every row in ``train``."""
    from losa_cache.extract import ExtractConfig, extract

    path = str(tmp_path_factory.mktemp("stores") / "plain-photos.zarr")
    extract(ExtractConfig(model="vit_micro", random_init=True, dataset=f"imagefolder:{photos}",
                          store=path, dtype="float32", workers=0), progress=False)  # fmt: skip
    return path
