"""``inat2018`` / ``inat2021``: iNaturalist from its official COCO-style annotation JSONs.

Each JSON has ``images`` [{id, file_name, ...}], ``annotations`` [{image_id, category_id}]
and ``categories`` [{id, name, ...}]; ``file_name`` is relative to the data root. Class index
= position of the category id among the sorted category ids (so the 2018 ids 0..8141 map to
themselves); names come from ``categories``. Rows: train then val, each in JSON order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losa_cache.data.base import DatasetError, DatasetNotFoundError, Sample
from losa_cache.data.files import FileDataset, normalise_source
from losa_cache.data.opener import FileRefused, text_stream

#: Version -> split -> annotation file name (official names).
INAT_FILES: dict[str, dict[str, str]] = {
    "inat2018": {"train": "train2018.json", "val": "val2018.json"},
    "inat2021": {"train": "train.json", "val": "val.json"},
}


@dataclass(repr=False)
class INatDataset(FileDataset):
    """iNaturalist 2018 or 2021 (train/val), labelled by species category."""

    @classmethod
    def from_root(cls, version: str, root: str | Path, spec: str | None = None) -> INatDataset:
        files = INAT_FILES[version]
        base = _find_root(version, Path(root).expanduser().resolve())
        docs = {split: _load_json(base / name) for split, name in files.items()}
        categories = _categories(docs, files, base)
        position = {cid: i for i, cid in enumerate(sorted(categories))}
        samples: list[Sample] = []
        for split, doc in docs.items():
            samples += _split_samples(doc, split, position, base / files[split])
        return cls(
            spec=spec or version,
            samples=samples,
            classes=[categories[cid] for cid in sorted(categories)],
            task=version,
            meta={"category_ids": sorted(categories)},
            root=str(base),
        )


def _find_root(version: str, root: Path) -> Path:
    """The folder holding the JSONs: ``root`` itself, or ``root/<version>`` for a shared root."""
    train = INAT_FILES[version]["train"]
    for candidate in (root, root / version):
        if (candidate / train).is_file():
            return candidate
    names = " and ".join(INAT_FILES[version].values())
    raise DatasetNotFoundError(
        f"{version}: expected {names} in {root} (or in {root / version}); download the "
        "official annotation JSONs there, next to the image folders their file_name points into"
    )


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetNotFoundError(f"missing {path}; put the official annotation JSON there")
    try:
        with text_stream(path, "annotation file") as f:  # a BOM, if an editor wrote one, dropped
            doc = json.load(f)
    except (OSError, FileRefused, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"cannot parse {path}: {err}; re-download the annotation file") from err
    keys = ("images", "annotations", "categories")
    missing = [k for k in keys if not isinstance(doc, dict) or not isinstance(doc.get(k), list)]
    if missing:
        raise DatasetError(f"{path} is not a COCO-style annotation file: no list {missing}")
    return doc


def _categories(docs: dict[str, dict], files: dict[str, str], base: Path) -> dict[int, str]:
    """Category id -> name over all splits; the same id must have the same name."""
    out: dict[int, str] = {}
    for split, doc in docs.items():
        where = base / files[split]
        for cat in doc["categories"]:
            cid, name = _field(cat, "id", where), str(_field(cat, "name", where))
            if out.setdefault(int(cid), name) != name:
                raise DatasetError(
                    f"{where}: category {cid} is named {name!r} here and {out[int(cid)]!r} in "
                    "another split; use annotation files from the same release"
                )
    if not out:
        raise DatasetError(f"no categories in {base}; the annotation files look empty")
    return out


def _split_samples(
    doc: dict[str, Any], split: str, position: dict[int, int], where: Path
) -> list[Sample]:
    """Rows of one split, in the JSON's image order; unannotated images get label -1."""
    label_of: dict[Any, int] = {}
    first: dict[Any, Any] = {}  # image id -> the annotation that labelled it
    for ann in doc["annotations"]:
        cid = int(_field(ann, "category_id", where))
        if cid not in position:
            raise DatasetError(f"{where}: annotation uses unknown category_id {cid}")
        image = _field(ann, "image_id", where)
        if label_of.setdefault(image, position[cid]) != position[cid]:
            raise DatasetError(
                f"{where}: image {image} is annotated as category "
                f"{first[image].get('category_id')} (annotation {first[image].get('id')}) and "
                f"as category {cid} (annotation {ann.get('id')}); an image must have one label"
            )
        first.setdefault(image, ann)
    return [
        Sample(
            normalise_source(str(_field(img, "file_name", where))),
            label_of.get(_field(img, "id", where), -1),
            split,
        )
        for img in doc["images"]
    ]


def _field(record: Any, key: str, where: Path) -> Any:
    """``record[key]`` or a DatasetError naming the file and the broken record."""
    if not isinstance(record, dict) or key not in record:
        raise DatasetError(f"{where}: record without {key!r}: {str(record)[:120]}")
    return record[key]
