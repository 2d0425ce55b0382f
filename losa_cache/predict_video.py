"""Multi-view video evaluation: temporal clips x spatial crops, logits averaged.

4 temporal clips x 3 spatial crops (the default) is the multi-view testing of ViViT
(Arnab et al., 2021) and SlowFast (Feichtenhofer et al., 2019), which the video PEFT
papers follow. The LoSA paper (arXiv 2402.02887; /work/shared/papers) does not define its
test views: its Table 13 lists the video training hyperparameters (pipelines/kinetics.py),
no views, so 1 x 1 (the single view of extraction and training) is as defensible.

A video adapter's backbone is rebuilt from its fingerprint (frames, tubelet inflation,
stride, clip protocol), so the clips match those it was trained on. Each video gives
``clips x crops`` views (:func:`~losa_cache.data.video.clip_views`); the side network
scores every view and the video's logits are their mean. One view (1 x 1) is the
single-view clip extraction and live training use, with the same preprocessing, so its
logits equal :func:`~losa_cache.predict.image_logits` on that clip. Several spatial
crops resize the shorter side to the model's input size and crop along the longer one
(a square crop would leave nothing to spread them over).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from losa_cache.adapter import Adapter
from losa_cache.backbone import Backbone, create_backbone
from losa_cache.backbone.crop import recorded_preprocess
from losa_cache.backbone.vivit import video_alias
from losa_cache.checks import require_range
from losa_cache.data import get_dataset
from losa_cache.data.base import ImageDecodeError
from losa_cache.data.opener import printable
from losa_cache.data.video import (
    VIDEO_EXTENSIONS,
    ClipSampling,
    FrameSource,
    VideoRows,
    clip_views,
    open_video,
)
from losa_cache.extract import select_rows
from losa_cache.predict import check_read_limits, image_logits, prepare_backbone
from losa_cache.train.engine import Score

__all__ = [
    "evaluate_videos",
    "find_videos",
    "is_video_adapter",
    "predict_videos",
    "video_backbone",
    "video_logits",
]


def is_video_adapter(adapter: Adapter) -> bool:
    """Whether the adapter was trained on a ViViT's clip features."""
    return video_alias(str(adapter.fingerprint.get("model", ""))) is not None


def adapter_sampling(adapter: Adapter) -> ClipSampling:
    """The clip sampling the adapter's features were made with (its fingerprint's)."""
    fp = adapter.fingerprint
    return ClipSampling(int(fp["frames"]), int(fp["stride"]), str(fp["clip"]))


def video_backbone(
    adapter: Adapter, device: str | torch.device = "cpu", **weights: Any
) -> Backbone:
    """The adapter's ViViT with its clip length, inflation and sampling (``weights``: the
    create_backbone weight options: checkpoint, pretrained, random_init, seed)."""
    if not is_video_adapter(adapter):
        raise ValueError(
            f"the adapter was trained on {adapter.fingerprint.get('model')!r}, "
            "an image model: predict images, or eval its store"
        )
    fp, sampling = adapter.fingerprint, adapter_sampling(adapter)
    backbone = create_backbone(
        fp["model"],
        device=device,
        frames=sampling.frames,
        inflation=fp["inflation"],
        preprocess=recorded_preprocess(fp),
        **weights,
    )
    backbone.sampling = {"stride": sampling.stride, "clip": sampling.clip}
    return backbone


def view_transform(backbone: Backbone, crops: int) -> Callable[[Any], Tensor]:
    """The single-view preprocessing for 1 crop; else a shorter-side resize only."""
    if crops == 1:
        return backbone.transform()
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms

    p = backbone.preprocess
    return transforms.Compose(
        [
            transforms.Resize(
                int(p["input_size"][-1]), interpolation=str_to_interp_mode(p["interpolation"])
            ),
            transforms.ToTensor(),
            transforms.Normalize(p["mean"], p["std"]),
        ]
    )


def video_logits(
    adapter: Adapter,
    backbone: Backbone,
    source: FrameSource,
    clips: int = 4,
    crops: int = 3,
    batch_size: int = 8,
) -> Tensor:
    """(clips x crops, C) float32 logits, one row per view (clip-major); mean them to score."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    transform = view_transform(backbone, crops)
    crop = int(backbone.preprocess["input_size"][-1])
    views = clip_views(source, adapter_sampling(adapter), transform, clips, crops, crop)
    return torch.cat(
        [
            image_logits(adapter, backbone, views[i : i + batch_size])
            for i in range(0, len(views), batch_size)
        ]
    )


#: Most temporal clips and spatial crops per video: every view of a video is held at once.
MAX_VIEWS = (64, "the views of one video are held in memory together")


def _views(clips: int, crops: int) -> dict[str, int]:
    if clips < 1 or crops < 1:
        raise ValueError(f"--clips and --crops must be >= 1, got {clips} and {crops}")
    require_range("clips", clips, 1, MAX_VIEWS)
    require_range("crops", crops, 1, MAX_VIEWS)
    return {"clips": clips, "crops": crops}


def predict_videos(
    adapter: Adapter,
    backbone: Backbone,
    paths: Sequence[str | Path],
    clips: int = 4,
    crops: int = 3,
    top_k: int = 5,
    batch_size: int = 8,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Top-k classes of each video from its views' mean logits; a bad video (also one that is
    not a regular file, or over ``max_file_bytes``: data/opener.py) is an error row."""
    _views(clips, crops)
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    check_read_limits(batch_size, max_pixels, max_file_bytes)
    k = min(top_k, adapter.config.num_classes)
    prepare_backbone(adapter, backbone)
    rows = []
    for path in paths:
        try:
            source = open_video(path, max_pixels, max_file_bytes)
        except ImageDecodeError as err:
            rows.append(
                {
                    "path": printable(path),
                    "labels": [],
                    "classes": [],
                    "probs": [],
                    "error": str(err),
                }
            )
            continue
        logits = video_logits(adapter, backbone, source, clips, crops, batch_size)
        probs, labels = logits.mean(dim=0).softmax(dim=-1).topk(k)  # (k,) each
        rows.append(
            {
                "path": printable(path),
                "labels": labels.tolist(),
                "classes": [adapter.classes[j] for j in labels.tolist()],
                "probs": probs.tolist(),
                "error": None,
            }
        )
    return rows


def find_videos(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given (missing ones become error rows); folders -> their videos, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in VIDEO_EXTENSIONS
        )
        if not found:
            raise FileNotFoundError(
                f"no videos in folder {p} (suffixes: {' '.join(sorted(VIDEO_EXTENSIONS))})"
            )
        out += found
    if not out:
        raise ValueError("no videos given")
    return out


def evaluate_videos(
    adapter: Adapter,
    backbone: Backbone,
    dataset: str,
    split: str = "test",
    clips: int = 4,
    crops: int = 3,
    batch_size: int = 8,
    limit: int | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Multi-view accuracy of a video adapter on a data set split (decoded live).

    Videos that cannot be decoded are not scored and are listed in ``skipped``.
    """
    views = _views(clips, crops)
    prepare_backbone(adapter, backbone)
    ds = get_dataset(dataset, data_root=data_root, sampling=adapter_sampling(adapter))
    if not isinstance(ds, VideoRows):
        raise ValueError(
            f"{dataset} holds images; multi-view evaluation needs a video data "
            "set (videofolder:, framefolder:, kinetics:, list: of videos)"
        )
    if list(ds.classes) != list(adapter.classes):
        raise ValueError(
            f"{dataset} has classes {ds.classes[:5]} but the adapter was trained "
            f"on {adapter.classes[:5]}: evaluate it on the data set it was trained "
            "for"
        )
    rows, splits = select_rows(ds, limit, [split])
    labels = ds.table.labels
    scored, target, logits, skipped = [], [], [], []
    for r in (rows[i] for i in splits[split]):
        if labels[r] < 0:
            continue
        try:
            source = ds.frames_of(r)
        except ImageDecodeError as err:
            skipped.append({"source": ds.samples[r].source, "error": str(err)})
            continue
        logits.append(video_logits(adapter, backbone, source, clips, crops, batch_size).mean(0))
        scored.append(r)
        target.append(int(labels[r]))
    if not scored:
        raise ValueError(f"split {split!r} of {dataset} has no decodable labelled videos")
    score = Score(adapter.config.num_classes, torch.device("cpu"))  # the engine's sums
    score.add(torch.stack(logits), torch.tensor(target))
    result = {
        "accuracy": score.accuracy,
        "correct": int(score.correct.sum()),
        "count": score.n,
        "loss": score.loss,
        "mean_class_accuracy": score.mean_class_accuracy(),
        "per_class": score.per_class(adapter.classes),
    }
    return {
        **result,
        "split": split,
        "task": ds.task,
        "dataset": dataset,
        "views": views,
        "rows": np.asarray(scored).tolist(),
        "skipped": skipped,
    }
