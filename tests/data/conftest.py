"""Tiny on-disk fixtures in each real layout (a handful of few-pixel images each)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

WriteImage = Callable[..., Path]


def make_image(path: Path, size: tuple[int, int] = (8, 6), seed: int = 0) -> Path:
    """A small noisy RGB image; the format follows the suffix (PNG, JPEG, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def write_image() -> WriteImage:
    """``write_image(path, size=(8, 6), seed=0) -> path``: a tiny image, parents created."""
    return make_image


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def vtab_task(tmp_path: Path) -> Path:
    """A VTAB-1k task folder: 3 train800, 2 val200, their union, 2 test (labels 0..2)."""
    task = tmp_path / "vtab-1k" / "dtd"
    files = {
        "train800.txt": ["images/t0.jpg 0", "images/t1.jpg 1", "images/t2.jpg 2"],
        "val200.txt": ["images/v0.jpg 1", "images/v1.jpg 0"],
        "test.txt": ["images/s0.jpg 2", "images/s1.jpg 0"],
    }
    files["train800val200.txt"] = files["train800.txt"] + files["val200.txt"]
    for name, lines in files.items():
        write_lines(task / name, lines)
        for i, line in enumerate(lines):
            make_image(task / line.split()[0], seed=i)
    return task


def inat_doc(images: list[tuple[int, str, int]], categories: dict[int, str]) -> dict:
    """A COCO-style iNat annotation dict from (image id, file_name, category id) triples."""
    return {
        "info": {"year": 2018},
        "images": [{"id": i, "file_name": f, "width": 8, "height": 6} for i, f, _ in images],
        "annotations": [{"id": 100 + i, "image_id": i, "category_id": c} for i, _, c in images],
        "categories": [
            {"id": cid, "name": name, "supercategory": "Plantae"}
            for cid, name in categories.items()
        ],
    }


@pytest.fixture
def inat_root(tmp_path: Path) -> Path:
    """An iNat 2018 root: categories with ids 7, 2, 5 (unsorted on purpose)."""
    root = tmp_path / "inat2018"
    cats = {7: "Quercus robur", 2: "Bufo bufo", 5: "Parus major"}
    train = [
        (11, "train_val2018/Plantae/7/a.jpg", 7),
        (3, "train_val2018/Amphibia/2/b.jpg", 2),
        (8, "train_val2018/Aves/5/c.jpg", 5),
    ]
    val = [(21, "train_val2018/Aves/5/d.jpg", 5)]
    for name, images in (("train2018.json", train), ("val2018.json", val)):
        root.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(inat_doc(images, cats)), encoding="utf-8")
        for i, file_name, _ in images:
            make_image(root / file_name, seed=i)
    return root


@pytest.fixture(scope="session")
def packed_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same 20 demo images as an imagefolder, WebDataset shards, a save_to_disk
    DatasetDict and parquet files: ``{"sets", "root", "patterns", "specs": {form: spec}}``."""
    from tests._packed_sets import write_hf, write_imagefolder, write_parquet, write_wds

    root = tmp_path_factory.mktemp("packed")
    sets = write_imagefolder(root / "folder")
    patterns = write_wds(sets, root / "wds")
    write_hf(sets, root / "hf")
    write_parquet(sets, root / "pq")
    named = ",".join(f"{split}={pattern}" for split, pattern in patterns.items())
    specs = {
        "imagefolder": sets.imagefolder,
        "wds": f"wds:{named},label-key=txt",
        "wds_split_key": f"wds:{root}/wds/{{train-{{000..003}},val-{{000..001}},"
        "test-{000..001}}.tar,split-key=json:split,label-key=json:label",
        "hf": f"hf:{root}/hf",
        "parquet": f"hf:{root}/pq,image-column=img,label-column=fine",
    }
    return {"sets": sets, "root": root, "patterns": patterns, "specs": specs}


@pytest.fixture(scope="session")
def packed_reference(packed_sets: dict[str, Any], tmp_path_factory) -> str:
    """The imagefolder extracted: the store every packed format must equal."""
    from losa_cache.extract import ExtractConfig, extract
    from tests._packed_sets import EXTRACT

    path = str(tmp_path_factory.mktemp("packed_ref") / "folder.zarr")
    spec = packed_sets["specs"]["imagefolder"]
    extract(ExtractConfig(dataset=spec, store=path, **EXTRACT), progress=False)
    return path
