"""``predict`` and ``eval`` from their configs: which path an adapter takes (cached
features, live images, live video clips) is chosen here, once, for the CLI and Python.

    rows, adapter = predict_files(PredictConfig(adapter="runs/cifar", images=["photos/"]))
    scores = evaluate_adapter(EvalConfig(adapter="runs/cifar", store="stores/cifar.zarr"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from losa_cache.adapter import Adapter, load_adapter
from losa_cache.backbone import create_backbone
from losa_cache.backbone.crop import recorded_preprocess
from losa_cache.checks import BATCH_LIMIT, max_workers
from losa_cache.device import pick_device
from losa_cache.fields import check_fields, option
from losa_cache.predict import evaluate_store, find_images, predict_images
from losa_cache.predict_video import (
    evaluate_videos,
    find_videos,
    is_video_adapter,
    predict_videos,
    video_backbone,
)
from losa_cache.store import open_store

__all__ = ["EvalConfig", "PredictConfig", "evaluate_adapter", "predict_files"]

ADAPTER_HELP = "Adapter directory (adapter.json + adapter.safetensors) written by `train --out`."


@dataclass(kw_only=True)
class LiveBackbone:
    """The frozen backbone an adapter runs on live (predict, and eval of video clips)."""

    checkpoint: str | None = option(
        None, "Backbone weights: .npz, .pth/.bin, .safetensors.", panel="Backbone"
    )
    pretrained: bool = option(False, "timm weights from the local cache.", panel="Backbone")
    random_init: bool = option(False, "Random backbone weights (tests).", panel="Backbone")
    seed: int = option(0, "Seed of --random-init.", min=0, panel="Backbone")
    device: str = option("auto", "auto | cpu | cuda | cuda:N.", panel="Backbone")
    clips: int = option(
        4,
        "Video: temporal clips per video, spread evenly over it "
        "(ViViT/SlowFast multi-view testing: 4).",
        min=1,
        panel="Video",
    )
    crops: int = option(
        3,
        "Video: spatial crops per clip along the longer side "
        "(ViViT/SlowFast multi-view testing: 3).",
        min=1,
        panel="Video",
    )

    def weights(self) -> dict[str, Any]:
        """The create_backbone weight options."""
        return {"checkpoint": self.checkpoint, "pretrained": self.pretrained,
                "random_init": self.random_init, "seed": self.seed}  # fmt: skip


@dataclass(kw_only=True)
class PredictConfig(LiveBackbone):
    """``losa-cache predict``: classify files with the live backbone + adapter."""

    adapter: str = option(help=ADAPTER_HELP)
    images: list[str] = option(  # noqa: RUF009
        help="Image files, or folders (every image inside, sorted).", argument=True
    )
    model: str | None = option(
        None, "Backbone alias or timm name (default: the adapter's backbone)."
    )
    top_k: int = option(5, "Classes to report per image.", min=1)
    batch_size: int = option(
        64, "Images per forward pass.", min=1, max=BATCH_LIMIT, panel="Performance"
    )
    max_pixels: int | None = option(
        None,
        "Largest image decoded, width x height (default: 89478485, PIL's guard); "
        "larger ones are reported, not predicted.",
        min=1,
        panel="Data",
    )
    max_file_bytes: int | None = option(
        None, "Largest file read, e.g. 300MB (default: 256 MiB an image, 4 GiB a video); "
        "larger ones and anything but a regular file are reported, not read.", min=1,
        unit="bytes", panel="Data")  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)


def predict_files(cfg: PredictConfig) -> tuple[list[dict[str, Any]], Adapter]:
    """One row per file (``error`` set where it could not be read), and the adapter: a
    video adapter (ViViT) classifies video files from the mean logits of clips x crops
    views, any other images."""
    adapter = load_adapter(cfg.adapter)
    device = pick_device(cfg.device)
    limits = {"max_pixels": cfg.max_pixels, "max_file_bytes": cfg.max_file_bytes}
    if is_video_adapter(adapter):
        if cfg.model is not None and cfg.model != adapter.fingerprint["model"]:
            raise ValueError(
                f"the adapter was trained on {adapter.fingerprint['model']}; drop "
                f"--model {cfg.model} (video adapters rebuild their own ViViT)"
            )
        backbone = video_backbone(adapter, device, **cfg.weights())
        rows = predict_videos(adapter, backbone, find_videos(cfg.images), cfg.clips, cfg.crops,
                              cfg.top_k, **limits)  # fmt: skip
        return rows, adapter
    files = find_images(cfg.images)
    backbone = create_backbone(cfg.model or adapter.fingerprint["model"], device=device,
                               preprocess=recorded_preprocess(adapter.fingerprint),
                               **cfg.weights())  # fmt: skip
    rows = predict_images(adapter, backbone, files, batch_size=cfg.batch_size, top_k=cfg.top_k,
                          **limits)  # fmt: skip
    return rows, adapter


@dataclass(kw_only=True)
class EvalConfig(LiveBackbone):
    """``losa-cache eval``: score an adapter on a store split (or, for a video adapter, on a
    data set's clips live)."""

    adapter: str = option(help=ADAPTER_HELP)
    store: str | None = option(None, "Store path or URL with the adapter's layers.")
    split: str = option("test", "Split to score.")
    task: str | None = option(
        None, "Labelling to score against (default: the adapter's task, else the store's)."
    )
    batch_size: int | None = option(
        None, "Rows per forward pass (default: the adapter's training batch size).", min=1,
        max=BATCH_LIMIT, panel="Performance")  # fmt: skip
    amp: str | None = option(
        None,
        "auto | bf16 | fp32 (default: the precision the adapter was trained in).",
        panel="Performance",
    )
    workers: int = option(
        4, "I/O threads of the store reader.", min=0, max=max_workers, panel="Performance"
    )
    allow_incomplete: bool = option(
        False, "Score an incomplete store's finished shards (says what fraction that is)."
    )
    dataset: str | None = option(
        None,
        "Video: score a data set's clips live instead of a store (multi-view).",
        panel="Video",
    )
    limit: int | None = option(None, "Video: at most N videos of the split.", min=1, panel="Video")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.dataset is not None and self.store is not None:
            raise ValueError(
                "give --store (cached features) or --dataset (video, multi-view), not both"
            )
        if self.dataset is None and self.store is None:
            raise ValueError(
                "give --store (the features to score), or --dataset for a video adapter"
            )

    def source(self) -> str:
        """What is scored, as the summary names it."""
        if self.dataset is not None:
            return f"{self.dataset} ({self.clips}x{self.crops} views)"
        return str(self.store)


def evaluate_adapter(cfg: EvalConfig) -> dict[str, Any]:
    """Accuracy, loss and per-class scores: a store split's cached features through the
    training engine's evaluation (equal to metrics.json's numbers), or a data set's clips
    live, multi-view (``skipped`` lists the videos that could not be read)."""
    adapter = load_adapter(cfg.adapter)
    if cfg.dataset is not None:
        backbone = video_backbone(adapter, pick_device(cfg.device), **cfg.weights())
        return evaluate_videos(adapter, backbone, cfg.dataset, cfg.split, cfg.clips, cfg.crops,
                               batch_size=cfg.batch_size or 8, limit=cfg.limit)  # fmt: skip
    store = open_store(cfg.store, allow_incomplete=cfg.allow_incomplete)
    return evaluate_store(adapter, store, split=cfg.split, task=cfg.task,
                          batch_size=cfg.batch_size, allow_incomplete=cfg.allow_incomplete,
                          amp=cfg.amp, workers=cfg.workers)  # fmt: skip
