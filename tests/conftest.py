"""Shared fixtures: tiny backbones, the embedded demo data, small stores.

Every test store comes from one factory, ``make_store(**config)``: a store is extracted once
per session (per xdist worker) for each distinct config, so files asking for the same store
share one build. A test that changes a store works on ``store_copy(path)``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests._stores import MICRO_STORE, STORE_BASE, extract_store

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


MakeStore = Callable[..., str]


@pytest.fixture(scope="session")
def make_store(tmp_path_factory: pytest.TempPathFactory) -> MakeStore:
    """``make_store(name="store", then=None, **config) -> path``: a complete store of
    ``STORE_BASE`` updated with ``config`` (ExtractConfig's fields), extracted once per
    session for each distinct (name, then, config); ``then(path)`` runs once on a new store
    (adding tasks, say), so fixtures defined twice (imported into another module) share one
    store. Read-only: a test that changes it takes ``store_copy(path)``."""
    made: dict[tuple, str] = {}

    def get(name: str = "store", then: Callable[[str], object] | None = None,
            **config: Any) -> str:  # fmt: skip
        cfg = {**STORE_BASE, **config}
        settings = tuple(sorted((k, repr(v)) for k, v in cfg.items()))
        key = (name, then and then.__qualname__, settings)
        if key not in made:
            path = extract_store(tmp_path_factory.mktemp("stores") / f"{name}.zarr", **cfg)
            if then is not None:
                then(path)
            made[key] = path
        return made[key]

    return get


@pytest.fixture
def store_copy(tmp_path: Path) -> Callable[[str | Path], Path]:
    """``store_copy(path) -> copy``: a private copy of a (session) store, free to change or
    damage; repeated calls for one store in one test give separate copies."""

    def copy(path: str | Path) -> Path:
        dst = tmp_path / Path(path).name
        n = 1
        while dst.exists():
            dst, n = tmp_path / f"{Path(path).stem}-{n}{Path(path).suffix}", n + 1
        shutil.copytree(path, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def micro_store(make_store: MakeStore) -> str:
    """A complete fp32 store of the demo data set (first 64 rows per split) from vit_micro."""
    return make_store("micro", **MICRO_STORE)


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
