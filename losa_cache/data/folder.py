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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from losa_cache.data.base import DatasetError, Sample
from losa_cache.data.files import (
    IMAGE_EXTENSIONS,
    FileDataset,
    is_utf8,
    require_dir,
    warn_non_utf8,
)

#: Split folder name -> split name, in row order. "validation" is stored as "val".
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SPLIT_ORDER = ("train", "val", "test")
_HINT = "expected PATH/<class>/<images> or PATH/{train,val,test}/<class>/<images>"


@dataclass(repr=False)
class ImageFolderDataset(FileDataset):
    """Images sorted into one folder per class."""

    #: Spec name and the files taken as rows (``videofolder:`` shares this layout).
    KIND: ClassVar[str] = "imagefolder"
    EXTENSIONS: ClassVar[frozenset[str]] = IMAGE_EXTENSIONS
    ITEMS: ClassVar[str] = "images"

    @classmethod
    def from_path(cls, path: str | Path, spec: str | None = None) -> ImageFolderDataset:
        root = Path(path).expanduser().resolve()
        hint = _HINT.replace("images", cls.ITEMS)
        require_dir(root, f"{cls.KIND} root", hint)
        splits = split_dirs(root)
        by_split = {split: class_dirs(d) for split, d in splits.items()}
        classes = sorted({name for dirs in by_split.values() for name in dirs})
        if not classes:
            raise DatasetError(f"no class folders in {root}; {hint}")
        samples = _collect(root, by_split, classes, cls.EXTENSIONS)
        if not samples:
            exts = " ".join(sorted(cls.EXTENSIONS))
            raise DatasetError(f"no {cls.ITEMS} under {root} (looked for {exts}); {hint}")
        used = {s.label for s in samples}
        meta = {
            "layout": "flat" if splits == {"train": root} else "splits",
            "empty_classes": [c for i, c in enumerate(classes) if i not in used],
        }
        return cls(
            spec=spec or f"{cls.KIND}:{path}",
            samples=samples,
            classes=classes,
            task=root.name,
            meta=meta,
            root=str(root),
        )


def subdirs(path: Path) -> list[Path]:
    """Visible sub-folders, sorted by name."""
    try:
        entries = list(path.iterdir())
    except OSError as err:  # no permission, not a folder any more, ...
        raise DatasetError(f"cannot list the folder {path}: {err.strerror or err}") from err
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    warn_non_utf8([p for p in folders if not is_utf8(p.name)], "data set folder")
    return sorted((p for p in folders if is_utf8(p.name)), key=lambda p: p.name)


def _has_split_folders(root: Path) -> bool:
    return any(p.name in SPLIT_FOLDERS and subdirs(p) for p in subdirs(root))


def split_dirs(root: Path) -> dict[str, Path]:
    """Split name -> folder; the root itself is the single "train" split in the flat layout."""
    if not _has_split_folders(root):
        return {"train": root}
    dirs = subdirs(root)
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


def class_dirs(split_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in subdirs(split_dir)}


class _Walk:
    """Finds the images under every class folder, entering each real directory once.

    ``seen`` maps the (device, inode) of every folder already walked to the path it was
    walked as, so a symlink loop (``cat/loop -> ..``) or a second link to a folder already
    read adds nothing instead of repeating its images or never ending (what
    ``os.walk(followlinks=True)`` does). The real tree of every class is walked before any
    link is followed, so a folder keeps its own path and class even when a link elsewhere
    leads to it; the root and split folders are never entered through a link.
    """

    def __init__(self, reserved: list[Path], extensions: frozenset[str]) -> None:
        self.extensions = extensions
        self.seen: dict[tuple[int, int], Path] = {}
        for folder in reserved:
            key = _dir_key(folder)
            if key is not None:
                self.seen.setdefault(key, folder)
        self.skipped: list[tuple[Path, Path]] = []  # (link path, folder it repeats)
        self.non_utf8: list[Path] = []  # names no store can record

    def images(self, folders: list[Path]) -> dict[Path, list[str]]:
        """Image paths under each class folder (recursive, following links), relative, sorted."""
        found: dict[Path, list[str]] = {f: [] for f in folders}
        links: dict[Path, list[Path]] = {}
        for folder in folders:  # pass 1: the real trees, links set aside
            links[folder] = self._walk(folder, [folder], found[folder], follow=False)
        for folder in folders:  # pass 2: what the links add
            self._walk(folder, links[folder], found[folder], follow=True)
        return {f: sorted(paths) for f, paths in found.items()}

    def _walk(self, top: Path, start: list[Path], found: list[str], follow: bool) -> list[Path]:
        """Depth first in name order from ``start``; returns the links not followed."""
        pending, links = list(reversed(start)), []
        while pending:
            current = pending.pop()
            if not self._enter(current, is_top=current == top):
                continue
            subdirs = []
            for entry in _entries(current):
                path = Path(entry.path)
                if not is_utf8(entry.name):
                    if _is_dir(entry) or path.suffix.lower() in self.extensions:
                        self.non_utf8.append(path)
                elif not _is_dir(entry):
                    if path.suffix.lower() in self.extensions:
                        found.append(path.relative_to(top).as_posix())
                elif follow or not entry.is_symlink():
                    subdirs.append(path)
                else:
                    links.append(path)
            pending += reversed(subdirs)
        return links

    def _enter(self, path: Path, is_top: bool) -> bool:
        key = _dir_key(path)
        if key is None:
            return False
        first = self.seen.get(key)
        if first is not None and not (is_top and first == path):
            self.skipped.append((path, first))
            return False
        self.seen[key] = path
        return True

    def warn_skipped(self) -> None:
        warn_non_utf8(self.non_utf8, "data set file")
        if not self.skipped:
            return
        link, first = self.skipped[0]
        more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
        warnings.warn(
            f"imagefolder: {link} leads to {first}, which is already read; its images are "
            f"counted once{more} (symlink loop or a second link to one folder)",
            stacklevel=3,
        )


def _dir_key(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the real folder ``path`` leads to; None if it cannot be read."""
    try:
        st = path.stat()
    except OSError:  # a dangling or looping link, or no permission
        return None
    return st.st_dev, st.st_ino


def _entries(folder: Path) -> list[os.DirEntry]:
    """Visible entries of ``folder`` sorted by name (never file-system order)."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _collect(
    root: Path,
    class_dirs: dict[str, dict[str, Path]],
    classes: list[str],
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> list[Sample]:
    """Rows in (split, class, path) order; sources relative to ``root``."""
    index = {name: i for i, name in enumerate(classes)}
    folders = [f for dirs in class_dirs.values() for f in dirs.values()]
    walk = _Walk([root, *{f.parent for f in folders}, *folders], extensions)
    found = walk.images(folders)
    samples: list[Sample] = []
    for split, dirs in class_dirs.items():
        for name, folder in dirs.items():
            prefix = folder.relative_to(root).as_posix()
            samples += [Sample(f"{prefix}/{rel}", index[name], split) for rel in found[folder]]
    walk.warn_skipped()
    return samples
