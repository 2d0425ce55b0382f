"""Spec strings -> adapters: the single way in (``get_dataset``).

A spec is ``NAME`` or ``NAME:ARG``. Path arguments that are relative are resolved against
``data_root`` when one is given (so one data folder serves every spec), else the cwd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from losa_cache.data.base import (
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    warn_if_one_class,
)
from losa_cache.data.demo import DemoDataset
from losa_cache.data.files import FileDataset
from losa_cache.data.folder import ImageFolderDataset
from losa_cache.data.hf import USAGE as HF_USAGE
from losa_cache.data.hf import HfDataset
from losa_cache.data.inat import INAT_FILES, INatDataset
from losa_cache.data.kinetics import KineticsDataset
from losa_cache.data.listfile import ListFileDataset
from losa_cache.data.video import (
    ClipSampling,
    FrameFolderDataset,
    VideoFolderDataset,
    VideoListDataset,
    VideoRows,
    is_video_list,
    require_av,
)
from losa_cache.data.vtab import Vtab1kDataset
from losa_cache.data.wds import USAGE as WDS_USAGE
from losa_cache.data.wds import WdsDataset

Builder = Callable[[str, str, Path | None], ImageDataset]


@dataclass(frozen=True)
class Adapter:
    """One spec name: how to build it and how to write it (for error messages)."""

    build: Builder
    usage: str
    needs_arg: bool


def _demo(spec: str, arg: str, data_root: Path | None) -> ImageDataset:
    if not arg:
        return DemoDataset.create()
    try:
        return DemoDataset.create(seed=int(arg))
    except ValueError:
        raise DatasetError(f"{spec!r}: the demo seed must be an integer, e.g. 'demo:1'") from None


def _path(arg: str, data_root: Path | None) -> Path:
    path = Path(arg).expanduser()
    return path if path.is_absolute() or data_root is None else data_root / path


def _inat(version: str) -> Builder:
    def build(spec: str, arg: str, data_root: Path | None) -> ImageDataset:
        if not arg and data_root is None:
            raise DatasetNotFoundError(
                f"{version} needs its data root: pass --data-root DIR (Python: data_root=), "
                f"the folder holding {' and '.join(INAT_FILES[version].values())}, or use "
                f"'{version}:PATH'"
            )
        root = _path(arg, data_root) if arg else data_root
        return INatDataset.from_root(version, root, spec=spec)

    return build


def _list(spec: str, arg: str, data_root: Path | None) -> ImageDataset:
    dataset = ListFileDataset.from_file(_path(arg, data_root), spec=spec)
    return VideoListDataset.of(dataset) if is_video_list(dataset) else dataset


def _at_path(make: Callable[..., ImageDataset]) -> Builder:
    """The builder of an adapter made from one path argument: ``make(path, spec=spec)``."""
    return lambda spec, arg, root: make(_path(arg, root), spec=spec)


#: adapters made from one path (``NAME:PATH``): name -> (``make(path, spec=)``, usage)
PATH_ADAPTERS: dict[str, tuple[Callable[..., ImageDataset], str]] = {
    "imagefolder": (
        ImageFolderDataset.from_path,
        "imagefolder:PATH  (PATH/<class>/... or PATH/{train,val,test}/<class>/...)",
    ),
    "vtab1k": (
        Vtab1kDataset.from_path,
        "vtab1k:PATH/TASK  (train800.txt, val200.txt, train800val200.txt, test.txt)",
    ),
    "kinetics": (
        KineticsDataset.from_root,
        "kinetics:ROOT  ({train,validate,test}.csv + ROOT/<split>/<id>_<start>_<end>.mp4)",
    ),
    "videofolder": (
        VideoFolderDataset.from_path,
        "videofolder:PATH  (PATH/<class>/<video> or PATH/{train,val,test}/<class>/<video>)",
    ),
    "framefolder": (
        FrameFolderDataset.from_path,
        "framefolder:PATH  (PATH/<class>/<clip folder>/<frame images>, split folders optional)",
    ),
}

ADAPTERS: dict[str, Adapter] = {
    "demo": Adapter(_demo, "demo[:SEED]  (built-in procedural shapes, no files)", False),
    "inat2018": Adapter(
        _inat("inat2018"), "inat2018[:PATH]  (train2018.json, val2018.json)", False
    ),
    "inat2021": Adapter(_inat("inat2021"), "inat2021[:PATH]  (train.json, val.json)", False),
    "list": Adapter(_list, "list:FILE  (lines '<path> <label> [<split>]'; images or videos)", True),
    **{name: Adapter(_at_path(make), usage, True) for name, (make, usage) in PATH_ADAPTERS.items()},
    # bytes inside tar shards / arrow and parquet files; options ride in the spec
    "wds": Adapter(WdsDataset.from_spec, WDS_USAGE, True),
    "hf": Adapter(HfDataset.from_spec, HF_USAGE, True),
}


def parse_spec(spec: str) -> tuple[str, str]:
    """``"NAME:ARG"`` -> (name, arg), checking the name and whether ARG is required."""
    name, _, arg = spec.strip().partition(":")
    adapter = ADAPTERS.get(name.lower())
    if adapter is None:
        raise DatasetError(f"unknown data set spec {spec!r}; valid forms:\n{valid_forms()}")
    if adapter.needs_arg and not arg:
        raise DatasetError(f"{spec!r} needs an argument: {adapter.usage}")
    return name.lower(), arg


def valid_forms() -> str:
    return "\n".join(f"  {a.usage}" for a in ADAPTERS.values())


def get_dataset(
    spec: str,
    data_root: str | Path | None = None,
    max_pixels: int | None = None,
    sampling: ClipSampling | None = None,
    max_file_bytes: int | None = None,
) -> ImageDataset:
    """Build the adapter a spec names (see :func:`valid_forms`).

    ``max_pixels`` caps the images decoded (default :data:`DEFAULT_MAX_PIXELS`),
    ``max_file_bytes`` the files read (default: 256 MiB an image, 4 GiB a video);
    ``sampling`` picks the frames of video rows (default: 32 frames, stride 2, centre
    clip) and is refused for image data sets. Warns when every labelled row has one
    class: training on it cannot learn anything.
    """
    for key, value in (("max_pixels", max_pixels), ("max_file_bytes", max_file_bytes)):
        if value is not None and value < 1:
            raise DatasetError(f"{key} must be >= 1, got {value}")
    name, arg = parse_spec(spec)
    root = Path(data_root).expanduser() if data_root is not None else None
    dataset = ADAPTERS[name].build(spec, arg, root)
    if isinstance(dataset, FileDataset):
        dataset.max_pixels = max_pixels
        dataset.max_file_bytes = max_file_bytes
    if isinstance(dataset, VideoRows):
        if not isinstance(dataset, FrameFolderDataset):
            require_av()
        dataset.sampling = sampling or ClipSampling()
    elif sampling is not None:
        raise DatasetError(
            f"{spec!r} is an image data set, but clips were asked for (a vivit_* model or "
            "--frames/--stride/--clip): use a video data set (kinetics:, videofolder:, "
            "framefolder:, list: of videos) or an image model"
        )
    labels = dataset.table.labels
    warn_if_one_class({dataset.classes[i] for i in np.unique(labels[labels >= 0])}, spec)
    return dataset
