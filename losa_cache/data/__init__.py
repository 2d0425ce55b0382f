"""Data set adapters: a spec string -> an ordered, labelled, split list of images.

    get_dataset("demo")                                  # built in, no files
    get_dataset("imagefolder:/data/pets")                # PATH/<class>/... (+ split folders)
    get_dataset("vtab1k:/data/vtab-1k/dtd")              # PEFT-community VTAB-1k task
    get_dataset("inat2018", data_root="/data/inat2018")  # official COCO-style JSONs
    get_dataset("list:/data/my_list.txt")                # '<path> <label> [<split>]'
    get_dataset("kinetics:/data/k400", sampling=ClipSampling(32, 2))  # video: lists of frames
    get_dataset("videofolder:/data/clips")               # PATH/<class>/<video>
    get_dataset("framefolder:/data/frames")              # PATH/<class>/<clip>/<frames>

Every adapter decodes through :func:`open_rgb`; :class:`TorchImages` wraps chosen rows for
a DataLoader without ever raising on a bad image.
"""

from __future__ import annotations

from losa_cache.data.base import (
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    ImageDecodeError,
    Sample,
)
from losa_cache.data.decode import DEFAULT_MAX_PIXELS, open_rgb
from losa_cache.data.demo import DemoDataset
from losa_cache.data.files import FileDataset
from losa_cache.data.folder import ImageFolderDataset
from losa_cache.data.inat import INatDataset
from losa_cache.data.kinetics import KineticsDataset
from losa_cache.data.listfile import ListFileDataset
from losa_cache.data.registry import get_dataset, valid_forms
from losa_cache.data.sizes import KNOWN_SIZES, dataset_sizes
from losa_cache.data.torch_dataset import TorchImages
from losa_cache.data.video import (
    ClipSampling,
    FrameFolderDataset,
    VideoDecodeError,
    VideoFolderDataset,
    VideoListDataset,
    clip_views,
)
from losa_cache.data.vtab import Vtab1kDataset

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "KNOWN_SIZES",
    "ClipSampling",
    "DatasetError",
    "DatasetNotFoundError",
    "DemoDataset",
    "FileDataset",
    "FrameFolderDataset",
    "INatDataset",
    "ImageDataset",
    "ImageDecodeError",
    "ImageFolderDataset",
    "KineticsDataset",
    "ListFileDataset",
    "Sample",
    "TorchImages",
    "VideoDecodeError",
    "VideoFolderDataset",
    "VideoListDataset",
    "Vtab1kDataset",
    "clip_views",
    "dataset_sizes",
    "get_dataset",
    "open_rgb",
    "valid_forms",
]
