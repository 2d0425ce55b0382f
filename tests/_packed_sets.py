"""One handful of demo images written three ways: an imagefolder, WebDataset tar shards
and a Hugging Face dataset (save_to_disk and parquet), rows in the imagefolder's order.

The same PNG bytes go into every format, so extraction must give the same features for
the same image, bit for bit, whichever adapter read them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from losa_cache.data import get_dataset

#: extraction of the packed-format tests: 20 rows in 5 shards of 4 (tests/_packed_sets.py)
EXTRACT: dict[str, Any] = dict(
    model="vit_micro", random_init=True, workers=0, dtype="float32", shard_rows=4,
    chunk_rows=2, batch_size=4,
)  # fmt: skip
#: demo rows taken per split (enough for a few store shards of 4 rows)
PER_SPLIT = {"train": 10, "val": 5, "test": 5}
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class Image1:
    split: str
    cls: str
    name: str
    png: bytes


@dataclass(frozen=True)
class PackedSets:
    folder: Path
    images: list[Image1]  # in the imagefolder's row order
    classes: list[str]

    @property
    def imagefolder(self) -> str:
        return f"imagefolder:{self.folder}"


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_imagefolder(root: Path) -> PackedSets:
    """``root/{train,val,test}/<class>/<n>.png`` from the demo data set."""
    demo = get_dataset("demo")
    for split, rows in demo.split_indices().items():
        for n, row in enumerate(rows[: PER_SPLIT[split]]):
            path = root / split / demo.classes[demo.samples[row].label] / f"{n:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(demo.load(row)))
    folder = get_dataset(f"imagefolder:{root}")
    images = []
    for s in folder.samples:
        split, cls, name = s.source.split("/")
        images.append(Image1(split, cls, name, (root / s.source).read_bytes()))
    return PackedSets(root, images, list(folder.classes))


def write_wds(sets: PackedSets, out: Path, per_shard: int = 3) -> dict[str, str]:
    """Tar shards per split (``<split>-NNN.tar``), members png/cls/txt/json; returns
    {split: brace pattern}."""
    import webdataset

    out.mkdir(parents=True, exist_ok=True)
    patterns = {}
    for split in PER_SPLIT:
        rows = [im for im in sets.images if im.split == split]
        shards = [rows[i : i + per_shard] for i in range(0, len(rows), per_shard)]
        for k, shard in enumerate(shards):
            with webdataset.TarWriter(str(out / f"{split}-{k:03d}.tar")) as sink:
                for im in shard:
                    sink.write({
                        "__key__": f"{im.cls}/{im.name[:-4]}",
                        "png": im.png,
                        "cls": sets.classes.index(im.cls),
                        "txt": im.cls,
                        "json": {"label": im.cls, "split": split, "meta": {"id": im.name}},
                    })  # fmt: skip
        patterns[split] = f"{out}/{split}-{{000..{len(shards) - 1:03d}}}.tar"
    return patterns


def write_hf(sets: PackedSets, out: Path) -> Path:
    """A DatasetDict (train/validation/test) with an Image and a ClassLabel column,
    saved with save_to_disk to ``out``."""
    _dataset_dict(sets).save_to_disk(str(out))
    return out


def write_parquet(sets: PackedSets, out: Path) -> Path:
    """The same DatasetDict as ``<split>-00000-of-00001.parquet`` files in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for split, d in _dataset_dict(sets).items():
        d.to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
    return out


def _dataset_dict(sets: PackedSets):
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "fine": datasets.ClassLabel(names=sets.classes),
         "note": datasets.Value("string")}
    )  # fmt: skip
    parts = {}
    for split, name in HF_SPLIT.items():
        rows = [im for im in sets.images if im.split == split]
        parts[name] = datasets.Dataset.from_dict(
            {"img": [{"bytes": im.png, "path": None} for im in rows],
             "fine": [sets.classes.index(im.cls) for im in rows],
             "note": [im.name for im in rows]},
            features=features,
        )  # fmt: skip
    return datasets.DatasetDict(parts)


def same_store_content(a: str, b: str) -> None:
    """Features, status, labels, class names and splits equal, bit for bit (sources and
    task names differ between formats)."""
    from losa_cache.store import open_store

    x, y = open_store(a), open_store(b)
    assert x.layers == y.layers and x.complete and y.complete
    for layer in x.layers:
        np.testing.assert_array_equal(x.features(layer)[:], y.features(layer)[:])
    np.testing.assert_array_equal(x.status, y.status)
    np.testing.assert_array_equal(x.labels(), y.labels())
    assert x.classes() == y.classes()
    assert x.splits.keys() == y.splits.keys()
    for split in x.splits:
        np.testing.assert_array_equal(x.splits[split], y.splits[split])
