"""Video clips: decoding (PyAV), frame sampling, multi-view evaluation, and video adapters.

A video row decodes to a list of ``frames`` RGB PIL images (the image transform then runs
per frame, :class:`~losa_cache.data.torch_dataset.TorchImages` stacks them to (C, F, H, W)).
Sampling takes every ``stride``-th frame over a span of ``(frames - 1) * stride + 1``
frames, placed by the eval protocol: the centre clip by default (``clip="centre"``), or
``"start"``. A video shorter than the span is padded by repeating its last frame (what
PySlowFast's index clamping does; looping would put a cut inside the clip). Every failure
(missing, empty, corrupt or truncated file, no video stream, no decodable frame, an
undecodable codec, frames over ``max_pixels``) is a :class:`VideoDecodeError` naming the
file, so extraction skips and reports it like a bad image, or stops under ``--strict``.

Adapters: ``videofolder:PATH`` (class folders of video files, as ``imagefolder:``),
``framefolder:PATH`` (class folders of clip folders of frame images), ``list:FILE`` naming
video files; ``kinetics:ROOT`` lives in :mod:`losa_cache.data.kinetics`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from losa_cache.checks import range_error
from losa_cache.data.base import DatasetError, ImageDecodeError, Sample
from losa_cache.data.decode import DEFAULT_MAX_PIXELS, open_rgb
from losa_cache.data.files import IMAGE_EXTENSIONS, require_dir
from losa_cache.data.folder import ImageFolderDataset, class_dirs, split_dirs, subdirs
from losa_cache.data.listfile import ListFileDataset
from losa_cache.data.opener import DEFAULT_MAX_VIDEO_BYTES, FileRefused, open_regular, printable

#: File suffixes taken as videos (compared lower-case).
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"})
CLIP_PROTOCOLS = ("centre", "start")
#: Most frames in a clip: they are decoded, held and embedded together.
MAX_CLIP_FRAMES = (512, "a clip's frames are decoded, held and embedded together")


class VideoDecodeError(ImageDecodeError):
    """One video (or frame folder) could not be decoded into a clip; names the source."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason)
        self.args = (f"cannot decode video {source!r}: {reason}",)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ClipSampling:
    """Which frames make a clip: ``frames`` frames ``stride`` apart, placed by ``clip``."""

    frames: int = 32
    stride: int = 2
    clip: str = "centre"

    def __post_init__(self) -> None:
        for name, high in (("frames", MAX_CLIP_FRAMES), ("stride", None)):
            error = range_error(f"--{name}", getattr(self, name), integer=True, low=1, high=high)
            if error is not None:
                raise ValueError(error)
        if self.clip not in CLIP_PROTOCOLS:
            raise ValueError(f"unknown clip protocol {self.clip!r}; choose {CLIP_PROTOCOLS}")

    @property
    def span(self) -> int:
        """Frames of the video one clip covers."""
        return (self.frames - 1) * self.stride + 1

    def indices(self, total: int, start: int | None = None) -> list[int]:
        """Frame indices of the clip in a ``total``-frame video (short videos: last repeated)."""
        if total < 1:
            raise ValueError("a clip needs at least one frame")
        if start is None:
            room = max(0, total - self.span)
            start = room // 2 if self.clip == "centre" else 0
        return [min(start + k * self.stride, total - 1) for k in range(self.frames)]

    def view_starts(self, total: int, clips: int) -> list[int]:
        """Starts of ``clips`` temporal views spread evenly over the video (ViViT's and
        SlowFast's multi-view testing)."""
        room = max(0, total - self.span)
        if clips == 1:
            return [room // 2]
        return [round(k * room / (clips - 1)) for k in range(clips)]


# ---------------------------------------------------------------- decoding


def require_av() -> None:
    """Refuse a video-file data set up front when PyAV is missing (not one skip per row)."""
    try:
        import av  # noqa: F401
    except ImportError as err:
        raise DatasetError(
            "video files need PyAV: pip install 'losa-cache[video]' (or pip install av); "
            "framefolder: (frames as images) works without it"
        ) from err


class FrameSource:
    """The frames of one video, decoded once; ``get(i)`` gives frame ``i`` as RGB."""

    def __init__(self, count: int, get: Callable[[int], Image.Image]) -> None:
        self.count = count
        self.get = get


def open_video(
    path: str | Path, max_pixels: int | None = None, max_bytes: int | None = None
) -> FrameSource:
    """Decode every frame of a video file (PyAV); a :class:`VideoDecodeError` if impossible.

    Only a regular file of at most ``max_bytes`` (default :data:`DEFAULT_MAX_VIDEO_BYTES`)
    is opened (data/opener.py), and PyAV reads it from that open file.
    """
    import av

    name = str(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        file = open_regular(path, DEFAULT_MAX_VIDEO_BYTES if max_bytes is None else max_bytes)
    except FileRefused as err:
        raise VideoDecodeError(name, err.reason) from err
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise VideoDecodeError(name, "empty file (0 bytes)")
        frames = _decode(av, file, name, limit)
    if not frames:
        raise VideoDecodeError(name, "no decodable frame (0 frames)")
    _check_size(name, frames[0].width, frames[0].height, limit)
    return FrameSource(len(frames), lambda i: frames[i].to_image().convert("RGB"))


def _decode(av: Any, file: Any, name: str, limit: int) -> list[Any]:
    try:
        with av.open(file) as container:
            if not container.streams.video:
                raise VideoDecodeError(
                    name, "no video stream (audio only, or cut short before its index)"
                )
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoDecodeError(
                    name,
                    "no decoder for its video codec in this FFmpeg build; re-encode it, e.g. "
                    "`ffmpeg -i IN -c:v libx264 OUT.mp4`",
                )
            _check_size(name, stream.codec_context.width, stream.codec_context.height, limit)
            return list(container.decode(stream))
    except VideoDecodeError:
        raise
    except Exception as err:  # av.error.* (corrupt, truncated, unknown codec), OSError
        raise VideoDecodeError(name, f"{type(err).__name__}: {err}") from err


def open_frame_folder(
    folder: Path, max_pixels: int | None = None, max_bytes: int | None = None
) -> FrameSource:
    """The frame images of one clip folder, in natural name order (frame_2 before frame_10)."""
    if not folder.is_dir():
        raise VideoDecodeError(str(folder), "frame folder not found")
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: _natural(p.name),
    )
    if not files:
        raise VideoDecodeError(str(folder), "no frame images (0 frames)")

    def get(i: int) -> Image.Image:
        try:
            return open_rgb(files[i], max_pixels=max_pixels, max_bytes=max_bytes)
        except ImageDecodeError as err:
            raise VideoDecodeError(
                str(folder), f"frame {printable(files[i].name)}: {err.reason}"
            ) from err

    return FrameSource(len(files), get)


def _check_size(name: str, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise VideoDecodeError(
            name,
            f"frames of {width}x{height} = {width * height:,} pixels are over the limit of "
            f"{limit:,}; pass a larger --max-pixels if the file is trusted",
        )


def _natural(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def take(source: FrameSource, indices: Sequence[int]) -> list[Image.Image]:
    """The frames at ``indices`` (each converted once, repeats shared)."""
    cache: dict[int, Image.Image] = {}
    for i in indices:
        if i not in cache:
            cache[i] = source.get(i)
    return [cache[i] for i in indices]


# ---------------------------------------------------------------- adapters


class VideoRows:
    """Mixin for adapters whose rows are clips: ``load`` gives ``sampling.frames`` frames.

    ``sampling`` is set by :func:`~losa_cache.data.get_dataset` (``--frames/--stride/--clip``).
    """

    sampling: ClipSampling = ClipSampling()
    max_pixels: int | None
    max_file_bytes: int | None

    @property
    def clip_frames(self) -> int:
        return self.sampling.frames

    def frames_of(self, index: int) -> FrameSource:
        """Every frame of row ``index``."""
        path = self.path(index)  # type: ignore[attr-defined]
        return open_video(path, self.max_pixels, self.max_file_bytes)

    def load(self, index: int) -> list[Image.Image]:  # type: ignore[override]
        source = self.frames_of(index)
        return take(source, self.sampling.indices(source.count))


@dataclass(repr=False)
class VideoFolderDataset(VideoRows, ImageFolderDataset):
    """``videofolder:PATH``: PATH/<class>/<video> or PATH/{train,val,test}/<class>/<video>."""

    KIND: ClassVar[str] = "videofolder"
    EXTENSIONS: ClassVar[frozenset[str]] = VIDEO_EXTENSIONS
    ITEMS: ClassVar[str] = "videos"


@dataclass(repr=False)
class VideoListDataset(VideoRows, ListFileDataset):
    """``list:FILE`` whose paths are video files."""

    @classmethod
    def of(cls, images: ListFileDataset) -> VideoListDataset:
        return cls(**{f.name: getattr(images, f.name) for f in fields(images)})


def is_video_list(dataset: ListFileDataset) -> bool:
    """Whether a list names videos; a list mixing videos and images is refused."""
    kinds = {Path(s.source).suffix.lower() in VIDEO_EXTENSIONS for s in dataset.samples}
    if len(kinds) > 1:
        raise DatasetError(
            f"{dataset.spec}: the list mixes video files ({' '.join(sorted(VIDEO_EXTENSIONS))}) "
            "and images; put them in two lists"
        )
    return kinds == {True}


_FRAME_HINT = "expected PATH/<class>/<clip>/<frames> or PATH/{train,val,test}/<class>/<clip>/..."


@dataclass(repr=False)
class FrameFolderDataset(VideoRows, ImageFolderDataset):
    """``framefolder:PATH``: one folder of frame images per clip, in class folders."""

    KIND: ClassVar[str] = "framefolder"

    @classmethod
    def from_path(cls, path: str | Path, spec: str | None = None) -> FrameFolderDataset:
        root = Path(path).expanduser().resolve()
        require_dir(root, "framefolder root", _FRAME_HINT)
        by_split = {s: class_dirs(d) for s, d in split_dirs(root).items()}
        classes = sorted({name for dirs in by_split.values() for name in dirs})
        index = {name: i for i, name in enumerate(classes)}
        samples = [
            Sample(clip.relative_to(root).as_posix(), index[name], split)
            for split, dirs in by_split.items()
            for name, folder in dirs.items()
            for clip in subdirs(folder)
        ]
        if not samples:
            raise DatasetError(f"no clip folders under {root}; {_FRAME_HINT}")
        return cls(
            spec=spec or f"framefolder:{path}",
            samples=samples,
            classes=classes,
            task=root.name,
            meta={"layout": "frames"},
            root=str(root),
        )

    def frames_of(self, index: int) -> FrameSource:
        return open_frame_folder(self.path(index), self.max_pixels, self.max_file_bytes)


# ---------------------------------------------------------------- evaluation views


def clip_views(
    source: FrameSource,
    sampling: ClipSampling,
    transform: Callable[[Image.Image], torch.Tensor],
    temporal_clips: int = 4,
    spatial_crops: int = 3,
    crop: int | None = None,
) -> torch.Tensor:
    """Every evaluation view of one video: (temporal_clips x spatial_crops, C, F, H, W).

    Temporal views start evenly over the video (:meth:`ClipSampling.view_starts`); one
    temporal view is the clip ``sampling`` places (its protocol), the single-view clip.
    Spatial views are ``spatial_crops`` square crops of side ``crop`` (default: the
    transform's output height) spread along the longer side of each transformed frame,
    left/top to right/bottom (3 crops: the usual left, centre, right). ``transform`` must
    keep the longer side (e.g. a resize of the shorter side only) when ``spatial_crops > 1``.
    Views are ordered clip-major; averaging their logits is the caller's part.
    """
    if temporal_clips < 1 or spatial_crops < 1:
        raise ValueError("temporal_clips and spatial_crops must be >= 1")
    starts = [None] if temporal_clips == 1 else sampling.view_starts(source.count, temporal_clips)
    views = []
    for start in starts:
        frames = take(source, sampling.indices(source.count, start))
        clip = torch.stack([transform(f) for f in frames], dim=1)  # (C, F, H, W)
        views += _spatial_crops(clip, spatial_crops, crop)
    return torch.stack(views)


def _spatial_crops(clip: torch.Tensor, n: int, crop: int | None) -> list[torch.Tensor]:
    H, W = clip.shape[-2:]
    side = min(crop or H, H, W)
    long_h = H > W
    room = (H if long_h else W) - side
    offsets = [room // 2] if n == 1 else [round(k * room / (n - 1)) for k in range(n)]
    short = ((H if not long_h else W) - side) // 2
    out = []
    for o in offsets:
        top, left = (o, short) if long_h else (short, o)
        out.append(clip[..., top : top + side, left : left + side])
    return out
