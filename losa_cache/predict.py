"""Use an adapter: predict image files through a live backbone, or score cached features.

Both paths end in the same side network on the same block outputs, so predictions from
live images equal those from a float32 store extracted from the same images with the same
backbone (tests/test_predict.py checks this). Both refuse features from a backbone other
than the one the adapter was trained on (:func:`losa_cache.adapter.check_fingerprint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from losa_cache.adapter import Adapter, check_fingerprint
from losa_cache.backbone import Backbone
from losa_cache.checks import BATCH_LIMIT, max_workers, require_range
from losa_cache.data.base import ImageDecodeError
from losa_cache.data.decode import open_rgb
from losa_cache.data.files import IMAGE_EXTENSIONS
from losa_cache.data.opener import printable
from losa_cache.store import FeatureStore, StoreError
from losa_cache.store import schema as S
from losa_cache.train.cache import CacheChoice
from losa_cache.train.config import AMP
from losa_cache.train.engine import EvalJob, Inputs, evaluate
from losa_cache.train.keys import available_keys, check_held, side_inputs
from losa_cache.train.run import use_amp
from losa_cache.train.sources import StoreSource

__all__ = [
    "evaluate_store",
    "find_images",
    "image_logits",
    "live_features",
    "live_inputs",
    "predict_images",
    "prepare_backbone",
]


# ------------------------------------------------------------------------------ live images


def predict_images(
    adapter: Adapter,
    backbone: Backbone,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    top_k: int = 5,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Top-k classes of each image, in input order.

    Every row has ``path`` (printable: a name that is not UTF-8 shows its bytes as
    ``\\xNN``), ``labels`` (class indices), ``classes`` (names), ``probs`` and ``error``;
    an unreadable image gets empty lists and the reason in ``error`` and the others are
    still predicted (also one over ``max_pixels``, default
    :data:`~losa_cache.data.decode.DEFAULT_MAX_PIXELS`, a file over ``max_file_bytes`` or
    anything but a regular file: data/opener.py). Prunes ``backbone`` to the adapter's
    layers.
    """
    k = _top_k(top_k, adapter.config.num_classes)
    check_read_limits(batch_size, max_pixels, max_file_bytes)
    prepare_backbone(adapter, backbone)
    transform = backbone.transform()
    rows: list[dict[str, Any]] = [{} for _ in paths]
    for start in range(0, len(paths), batch_size):
        index, images = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(load_image(paths[i], transform, max_pixels, max_file_bytes))
                index.append(i)
            except ImageDecodeError as e:
                rows[i] = _error_row(paths[i], str(e))
        if images:
            logits = image_logits(adapter, backbone, torch.stack(images))
            for i, top in zip(index, _top_rows(logits, k, adapter.classes), strict=True):
                rows[i] = {"path": printable(paths[i]), **top, "error": None}
    return rows


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given (even missing ones: they become error rows); folders -> their images.

    A folder contributes every non-hidden file under it with an image suffix, sorted.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise FileNotFoundError(
                f"no images in folder {p} (suffixes: {' '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        out += found
    if not out:
        raise ValueError("no images given")
    return out


def prepare_backbone(adapter: Adapter, backbone: Backbone) -> None:
    """Refuse a backbone the adapter was not trained on; drop the blocks it never reads."""
    check_fingerprint(adapter.fingerprint, backbone.fingerprint())
    if getattr(adapter, "reads_images", False):  # a live baseline: its own backbone copy
        adapter.bind(backbone)
        return
    cfg = adapter.config
    if (backbone.tokens, backbone.dim) != (cfg.tokens, cfg.dim):
        raise ValueError(
            f"backbone gives (tokens, dim) = ({backbone.tokens}, {backbone.dim}); "
            f"the adapter expects ({cfg.tokens}, {cfg.dim})"
        )
    needed = deepest_block(adapter.model)
    if needed >= backbone.depth:
        raise ValueError(
            f"the adapter reads block {needed} but this backbone has "
            f"{backbone.depth} blocks (was it pruned for fewer layers?)"
        )
    if 0 <= needed < backbone.depth - 1:
        backbone.prune([needed])


def deepest_block(model: torch.nn.Module) -> int:
    """0-based index of the last block a live backbone runs for this side network (-1:
    none); ``sum:k`` needs blocks 0..k-1: MIST's backbone stops after its k-th block."""
    blocks, taps = live_inputs(model)
    sums = [int(t.split(":", 1)[1]) - 1 for t in taps if S.tap_kind(t) == "sum"]
    return max([*blocks, *sums, -1])


def check_read_limits(batch_size: int, max_pixels: int | None, max_file_bytes: int | None) -> None:
    """``predict``'s batch and read bounds, checked as extract's are (losa_cache/checks.py)."""
    require_range("batch_size", batch_size, 1, BATCH_LIMIT)
    require_range("max_pixels", max_pixels, 1)
    require_range("max_file_bytes", max_file_bytes, 1)


def load_image(
    path: str | Path,
    transform: Any,
    max_pixels: int | None = None,
    max_file_bytes: int | None = None,
) -> Tensor:
    """Decode + preprocess one file; any failure is an ImageDecodeError naming the file."""
    image = open_rgb(path, max_pixels=max_pixels, max_bytes=max_file_bytes)
    try:
        return transform(image)  # (3, H, W)
    except Exception as e:  # an odd image must not stop the batch
        raise ImageDecodeError(str(path), f"preprocessing failed: {type(e).__name__}: {e}") from e


def image_logits(adapter: Adapter, backbone: Backbone, x: Tensor) -> Tensor:
    """Preprocessed images (B, 3, H, W) -> (B, C) float32 logits on the CPU."""
    if getattr(adapter, "reads_images", False):  # a live baseline: its own backbone copy
        return adapter.image_logits(x)
    device = _device(backbone.model)
    blocks, taps = live_inputs(adapter.model)
    with torch.inference_mode():
        features = live_features(backbone, x.to(device), blocks, taps)
        logits = adapter.model.to(device).eval()(features)
    return logits.float().cpu()


def live_inputs(model: torch.nn.Module) -> tuple[list[int], list[str]]:
    """(blocks, taps) a side network reads, as a live backbone computes them (MIST: the
    one map G_k, ``sum:k``)."""
    cls, config = type(model), model.config
    return list(cls.blocks(config)), list(cls.taps(config))


def live_features(
    backbone: Backbone, x: Tensor, blocks: list[int], taps: list[str]
) -> dict[int | str, Tensor]:
    """{block index or tap name: (B, T, D)} as a store extracted with these taps holds them:
    blocks alone through timm's forward_intermediates, taps through extraction's own pass
    (losa_cache/forward.py: sums in fp32, no block after the deepest one needed is run)."""
    if not taps:
        return dict(zip(blocks, backbone.intermediates(x, blocks), strict=True))
    from losa_cache.forward import forward_taps, supports_taps

    if not supports_taps(backbone.model):
        raise ValueError(
            f"{backbone.name} is not a timm VisionTransformer, so the taps "
            f"{taps} this adapter reads cannot be computed; predict from a store "
            "with `losa-cache eval` instead"
        )
    arrays = forward_taps(backbone.model, x, blocks, ["blocks", *taps] if blocks else taps)
    return {
        **{b: arrays[S.feature_name(b)] for b in blocks},
        **{t: arrays[S.tap_array(t)] for t in taps},
    }


def _top_k(top_k: int, num_classes: int) -> int:
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return min(top_k, num_classes)


def _top_rows(logits: Tensor, k: int, classes: list[str]) -> list[dict[str, Any]]:
    probs, labels = logits.softmax(dim=-1).topk(k, dim=-1)  # (B, k) each
    return [
        {"labels": lab, "classes": [classes[j] for j in lab], "probs": p}
        for lab, p in zip(labels.tolist(), probs.tolist(), strict=True)
    ]


def _error_row(path: str | Path, error: str) -> dict[str, Any]:
    return {"path": printable(path), "labels": [], "classes": [], "probs": [], "error": error}


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# ------------------------------------------------------------------------------ cached features

#: Rows per batch when the adapter does not record the batch it was trained with.
EVAL_BATCH = 256


def evaluate_store(
    adapter: Adapter,
    store: FeatureStore,
    split: str = "test",
    task: str | None = None,
    batch_size: int | None = None,
    allow_incomplete: bool = False,
    amp: str | None = None,
    workers: int = 4,
) -> dict[str, Any]:
    """Accuracy, loss and per-class accuracy of the adapter on a store split's features.

    Scored by the training engine's own evaluation (:func:`losa_cache.train.engine.evaluate`)
    in the adapter's training batch size and precision by default, so the numbers equal
    the test (or val) numbers ``train`` wrote into metrics.json. ``task`` defaults to the
    adapter's task if the store has it, else the store's default. Rows that were skipped
    at extraction or have no label (-1) are not scored. An incomplete store is refused
    unless ``allow_incomplete``: then the rows of finished shards are scored and
    ``scored_fraction`` says how much of the split that was.
    """
    if getattr(adapter, "reads_images", False):  # a live baseline's (BaselineAdapter)
        raise StoreError(
            f"this adapter is a live baseline ({getattr(adapter, 'method', '?')}): it changes "
            "the backbone itself, so cached features cannot score it; use `losa-cache "
            "predict --adapter RUN --model ... IMAGES`, or its run's metrics.json test numbers"
        )
    check_store(adapter, store)
    if not allow_incomplete:
        store.require_complete(hint="or pass --allow-incomplete to score the finished part")
    task = _task(adapter, store, task)
    labels = store.labels(task).astype(np.int64)
    rows = store.split_rows(split, valid_only=False)
    rows = rows[(labels[rows] >= 0) & (store.status[rows] != S.SKIPPED)]  # scorable
    done = store.done_shards()[rows // store.layout.shard_rows]
    wanted, rows = len(rows), rows[done]
    if not len(rows):
        raise StoreError(
            f"split {split!r} of {store.path} has no labelled rows for task "
            f"{task!r}" + ("" if done.all() else " in its finished shards")
        )
    device = _device(adapter.model)
    batch = _trained(adapter, "batch_size", EVAL_BATCH) if batch_size is None else batch_size
    require_range("batch_size", batch, 1, BATCH_LIMIT)
    require_range("workers", workers, 0, max_workers)
    if amp not in (None, *AMP):
        raise ValueError(f"unknown amp {amp!r} (--amp); choose one of {list(AMP)}")
    job = EvalJob(
        adapter.model,
        side_inputs(adapter.model),
        rows,
        labels,
        task,
        int(batch),
        use_amp(amp or _trained(adapter, "amp", "fp32"), device),
        adapter.config.num_classes,
    )
    (score,) = evaluate([job], _store_inputs(store, device, rows, job.layers, workers))
    return {
        "accuracy": score.accuracy,
        "correct": int(score.correct.sum()),
        "count": score.n,
        "loss": score.loss,
        "mean_class_accuracy": score.mean_class_accuracy(),
        "per_class": score.per_class(adapter.classes),
        "split": split,
        "task": task,
        "store": store.path,
        "batch_size": job.batch,
        "amp": "bf16" if job.amp else "fp32",
        "complete": bool(done.all()),
        "scorable_rows": wanted,
        "scored_fraction": len(rows) / wanted,
    }


def _trained(adapter: Adapter, key: str, default: Any) -> Any:
    """What training used (its metrics' plan and amp, else its config), else ``default``."""
    metrics = adapter.meta.get("metrics") or {}
    used = {
        **(adapter.meta.get("train_config") or {}),
        **(metrics.get("plan") or {}),
        **({"amp": metrics["amp"]} if "amp" in metrics else {}),
    }
    return used.get(key, default)


def _store_inputs(
    store: FeatureStore, device: torch.device, rows: np.ndarray, layers: Sequence[int], workers: int
) -> Inputs:
    """The engine's inputs for one sequential read of ``rows`` (no cache: read once)."""
    return Inputs(
        StoreSource(store), device, CacheChoice("none", 0, "eval: one read"), rows, layers, workers
    )


def check_store(adapter: Adapter, store: FeatureStore) -> None:
    """Refuse a store from another backbone, or one without the blocks and taps the
    adapter reads (a ``sum:k`` the feed can add up from embed and blocks counts as held)."""
    check_fingerprint(adapter.fingerprint, store.fingerprint, what="the one that wrote this store")
    check_held(
        side_inputs(adapter.model),
        available_keys(store.taps, store.layers),
        f"this adapter ({adapter.config.method})",
        store.taps,
        store.layers,
    )
    cfg, layout = adapter.config, store.layout
    if (layout.tokens, layout.dim) != (cfg.tokens, cfg.dim):
        raise StoreError(
            f"store features are (tokens, dim) = ({layout.tokens}, {layout.dim}); "
            f"the adapter expects ({cfg.tokens}, {cfg.dim})"
        )


def _task(adapter: Adapter, store: FeatureStore, task: str | None) -> str:
    if task is None:
        task = adapter.task if adapter.task in store.tasks else store.default_task
    classes = store.classes(task)  # unknown task -> StoreError listing the tasks
    placeholder = adapter.classes == [str(i) for i in range(len(adapter.classes))]
    if len(classes) != len(adapter.classes) or (classes != adapter.classes and not placeholder):
        raise StoreError(
            f"task {task!r} has classes {_short(classes)} but the adapter was "
            f"trained on {_short(adapter.classes)}; pick the matching --task "
            f"(store tasks: {store.tasks})"
        )
    return task


def _short(items: list[str], n: int = 5) -> str:
    more = f" ... ({len(items)} in all)" if len(items) > n else ""
    return f"{items[:n]}{more}"
