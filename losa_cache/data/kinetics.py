"""``kinetics:ROOT``: Kinetics-400/600/700 in the DeepMind CSV layout (Kay et al., 2017).

::

    ROOT/train.csv, ROOT/validate.csv (or val.csv), ROOT/test.csv
        label,youtube_id,time_start,time_end,split[,is_cc]   (test.csv may have no label)
    ROOT/<split folder>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
        split folder = the CSV's stem (train, validate, val, test) or the split name,
        optionally with one sub-folder per label (ROOT/train/<label>/<clip>.mp4)

Classes are the sorted labels of every CSV. Rows follow CSV order. Clips that are not on
disk (YouTube takedowns leave every copy of Kinetics a few percent short) are left out
with one warning that counts them; a clip that is there but cannot be decoded is a row
that extraction names and skips.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from losa_cache.data.base import DatasetError, DatasetNotFoundError, Sample
from losa_cache.data.files import FileDataset
from losa_cache.data.opener import text_stream
from losa_cache.data.video import VideoRows

#: CSV stem -> split name, in row order.
CSV_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
_COLUMNS = ("youtube_id", "time_start", "time_end")
_HINT = "expected ROOT/{train,validate,test}.csv and ROOT/<split>/<youtube_id>_<start>_<end>.mp4"


def clip_name(youtube_id: str, start: int, end: int) -> str:
    """The file name of one Kinetics clip."""
    return f"{youtube_id}_{start:06d}_{end:06d}.mp4"


@dataclass(repr=False)
class KineticsDataset(VideoRows, FileDataset):
    """Kinetics clips named by the official CSVs."""

    @classmethod
    def from_root(cls, path: str | Path, spec: str | None = None) -> KineticsDataset:
        root = Path(path).expanduser().resolve()
        csvs = _csv_files(root)
        rows = {split: _read_csv(file) for split, file in csvs.items()}
        classes = sorted({label for lines in rows.values() for label, _ in lines if label})
        index = {name: i for i, name in enumerate(classes)}
        samples: list[Sample] = []
        missing: list[str] = []
        for split, lines in rows.items():
            found = _clip_paths(root, csvs[split].stem, split)
            for label, name in lines:
                rel = found.get(name)
                if rel is None:
                    missing.append(f"{split}/{name}")
                    continue
                samples.append(Sample(rel, index[label] if label else -1, split))
        if not samples:
            raise DatasetError(f"none of the clips the CSVs name are under {root}; {_HINT}")
        if missing:
            warnings.warn(
                f"kinetics: {len(missing)} clips named by the CSVs are not on disk (first: "
                f"{missing[0]}); they are left out",
                UserWarning,
                stacklevel=3,
            )
        return cls(
            spec=spec or f"kinetics:{path}",
            samples=samples,
            classes=classes,
            task=f"kinetics{len(classes)}" if len(classes) in (400, 600, 700) else root.name,
            meta={"missing_clips": len(missing)},
            root=str(root),
        )


def _csv_files(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise DatasetNotFoundError(f"kinetics root not found: {root} ({_HINT})")
    found: dict[str, Path] = {}
    for stem, split in CSV_SPLITS.items():
        file = root / f"{stem}.csv"
        if file.is_file():
            if split in found:
                raise DatasetError(f"{root} has both {found[split].name} and {file.name}; keep one")
            found[split] = file
    if not found:
        raise DatasetError(f"no Kinetics CSV in {root}; {_HINT}")
    return {s: found[s] for s in ("train", "val", "test") if s in found}


def _read_csv(file: Path) -> list[tuple[str, str]]:
    """(label or "", clip file name) per CSV row."""
    with text_stream(file, "Kinetics CSV") as f:
        reader = csv.DictReader(f)
        head = reader.fieldnames or []
        lacking = [c for c in _COLUMNS if c not in head]
        if lacking:
            raise DatasetError(
                f"{file}: missing column(s) {lacking}; a Kinetics CSV has label,youtube_id,"
                f"time_start,time_end,split (got {head})"
            )
        out = []
        for n, row in enumerate(reader, start=2):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError, OverflowError):
                raise DatasetError(
                    f"{file}:{n}: time_start/time_end must be numbers, got "
                    f"{row['time_start']!r}, {row['time_end']!r}"
                ) from None
            label = (row.get("label") or "").strip()
            out.append((label, clip_name(row["youtube_id"].strip(), start, end)))
    return out


def _clip_paths(root: Path, stem: str, split: str) -> dict[str, str]:
    """Clip file name -> path relative to root, for the split's folder (flat or per label)."""
    folder = next((root / n for n in dict.fromkeys((stem, split)) if (root / n).is_dir()), None)
    if folder is None:
        return {}
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir():
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                found.setdefault(sub.name, f"{folder.name}/{entry.name}/{sub.name}")
        else:
            found.setdefault(entry.name, f"{folder.name}/{entry.name}")
    return found
