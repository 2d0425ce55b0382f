"""``imagefolder:PATH``: class sub-folders (torchvision ImageFolder layout), optionally
under split folders.

Two layouts::

    PATH/<class>/**/<image>                 -> one split, "train"
    PATH/{train,val|validation,test}/<class>/**/<image>  -> those splits

The class set is the sorted union of class folder names over all splits, so a class missing
from one split keeps its index. Rows are sorted by (split, class, relative path): never
file-system order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from losa_cache.data.base import DatasetError, Sample
from losa_cache.data.files import IMAGE_EXTENSIONS, FileDataset, require_dir

#: Split folder name -> split name, in row order. "validation" is stored as "val".
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SPLIT_ORDER = ("train", "val", "test")
_HINT = "expected PATH/<class>/<images> or PATH/{train,val,test}/<class>/<images>"


@dataclass(repr=False)
class ImageFolderDataset(FileDataset):
    """Images sorted into one folder per class."""

    @classmethod
    def from_path(cls, path: str | Path, spec: str | None = None) -> ImageFolderDataset:
        root = Path(path).expanduser().resolve()
        require_dir(root, "imagefolder root", _HINT)
        split_dirs = _split_dirs(root)
        class_dirs = {split: _class_dirs(d) for split, d in split_dirs.items()}
        classes = sorted({name for dirs in class_dirs.values() for name in dirs})
        if not classes:
            raise DatasetError(f"no class folders in {root}; {_HINT}")
        samples = _collect(root, class_dirs, classes)
        if not samples:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"no images under {root} (looked for {exts}); {_HINT}")
        used = {s.label for s in samples}
        meta = {
            "layout": "flat" if split_dirs == {"train": root} else "splits",
            "empty_classes": [c for i, c in enumerate(classes) if i not in used],
        }
        return cls(
            spec=spec or f"imagefolder:{path}",
            samples=samples,
            classes=classes,
            task=root.name,
            meta=meta,
            root=str(root),
        )


def _subdirs(path: Path) -> list[Path]:
    """Visible sub-folders, sorted by name."""
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _has_split_folders(root: Path) -> bool:
    return any(p.name in SPLIT_FOLDERS and _subdirs(p) for p in _subdirs(root))


def _split_dirs(root: Path) -> dict[str, Path]:
    """Split name -> folder; the root itself is the single "train" split in the flat layout."""
    if not _has_split_folders(root):
        return {"train": root}
    dirs = _subdirs(root)
    others = [p.name for p in dirs if p.name not in SPLIT_FOLDERS]
    if others:
        raise DatasetError(
            f"{root} mixes split folders with other folders {others}; move those out, or "
            "point imagefolder: at one split folder"
        )
    found: dict[str, Path] = {}
    for p in dirs:
        split = SPLIT_FOLDERS[p.name]
        if split in found:
            raise DatasetError(
                f"{root} has both {found[split].name}/ and {p.name}/ (both mean split "
                f"{split!r}); keep one"
            )
        found[split] = p
    return {split: found[split] for split in _SPLIT_ORDER if split in found}


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in _subdirs(split_dir)}


def _images_under(folder: Path) -> list[str]:
    """Image paths under ``folder`` (recursive, following links), relative and sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(folder).as_posix())
    return sorted(found)


def _collect(
    root: Path, class_dirs: dict[str, dict[str, Path]], classes: list[str]
) -> list[Sample]:
    """Rows in (split, class, path) order; sources relative to ``root``."""
    index = {name: i for i, name in enumerate(classes)}
    samples: list[Sample] = []
    for split, dirs in class_dirs.items():
        for name, folder in dirs.items():
            prefix = folder.relative_to(root).as_posix()
            for rel in _images_under(folder):
                samples.append(Sample(f"{prefix}/{rel}", index[name], split))
    return samples
