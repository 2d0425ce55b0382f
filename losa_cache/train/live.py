"""Live mode: the frozen backbone runs on every piece (the paper's own setting, no store).

For data too big to store, and as the benchmark's baseline. Rows are numbered as
``extract`` numbers them (same data set, same ``--limit``) and pieces follow the same
:class:`~losa_cache.train.order.RowOrder` as a store's, so with the same seed an fp32
store and live mode give the same batches (features equal up to float rounding). The
backbone runs on pieces of ``piece_rows`` images and every run of a sweep is fed from
them: one forward per image for all configs.

Taps (``embed``, ``sum:k``, ``attn:i``, ``mlp:i``; :mod:`losa_cache.train.keys`) are
computed by the forward pass extraction runs (:func:`losa_cache.forward.forward_taps`, no
hooks), so a live feed yields the same keys, and with fp32 the same values, as a store.

The backbone never takes part in training: its parameters have ``requires_grad=False``,
its forward runs under ``torch.inference_mode`` and the optimizer only ever receives the
side network's parameters.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from losa_cache.backbone import Backbone, create_backbone
from losa_cache.backbone.vivit import VIDEO_ALIASES, video_alias
from losa_cache.baselines.methods import IMAGES
from losa_cache.data import TorchImages, get_dataset
from losa_cache.data.torch_dataset import decoding_workers, worker_context
from losa_cache.data.video import ClipSampling, VideoRows
from losa_cache.extract import select_rows
from losa_cache.store import StoreError
from losa_cache.store import schema as S
from losa_cache.train.feed import Piece, keep_mask, planned, rechunk
from losa_cache.train.keys import Key, deepest_block, key_tap, sort_keys
from losa_cache.train.order import RowOrder
from losa_cache.train.run import use_amp
from losa_cache.train.sources import SourceInfo, TaskData

__all__ = ["LiveFeed", "LiveSource", "frozen_features", "live_sampling"]


def frozen_features(
    backbone: Backbone, x: torch.Tensor, keys: Sequence[Key], amp: bool
) -> dict[Key, torch.Tensor]:
    """Features {key: (B, T, D)} (blocks, taps) with no autograd history, usable as
    training inputs: block outputs alone through the backbone's forward_intermediates,
    with taps through :func:`losa_cache.forward.forward_taps` (the same arithmetic)."""
    if any(p.requires_grad for p in backbone.model.parameters()):
        raise RuntimeError("live mode: the backbone must be frozen (requires_grad=False)")
    keys = sort_keys(keys)
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        if all(isinstance(k, int) for k in keys):
            outs = dict(zip(keys, backbone.intermediates(x, list(keys)), strict=True))
        else:
            outs = _taps(backbone.model, x, keys)
    # inference tensors cannot be saved for backward: a clone outside inference mode can
    return {key: out.clone() for key, out in outs.items()}


def _taps(model: torch.nn.Module, x: torch.Tensor, keys: Sequence[Key]) -> dict[Key, torch.Tensor]:
    from losa_cache.forward import forward_taps

    where = {key: key_tap(key) for key in keys}
    taps = sort_keys(
        {S.tap_kind(tap) if block is not None else tap for tap, block in where.values()}
    )
    layers = sorted({block for _, block in where.values() if block is not None})
    outs = forward_taps(model, x, layers, [str(t) for t in taps])
    return {key: outs[S.tap_array(*where[key])] for key in keys}


def live_taps(model: torch.nn.Module, depth: int) -> tuple[str, ...]:
    """The tap keys a live backbone computes: embed and every sum:k (timm ViTs), attn:i
    and mlp:i where its blocks are timm's pre-norm Block."""
    from losa_cache.forward import check_branches, supports_taps

    if not supports_taps(model):
        return ()
    keys = ["embed", *(f"sum:{k}" for k in range(1, depth + 1))]
    try:
        check_branches(model, range(depth))
    except ValueError:
        return tuple(keys)
    return (*(f"{kind}:{b}" for kind in ("attn", "mlp") for b in range(depth)), *keys)


def live_sampling(cfg: Any) -> ClipSampling | None:
    """The clips a live ViViT reads (extract's --frames/--stride/--clip); None for images.

    A sweep config has no clip fields (yet): it gets the model's clip length, stride 2,
    centre clip, extract's defaults."""
    va = video_alias(cfg.model)
    if va is None:
        return None
    return ClipSampling(
        getattr(cfg, "frames", None) or va.frames,
        getattr(cfg, "stride", 2),
        getattr(cfg, "clip", "centre"),
    )


def live_views(cfg: Any) -> int:
    """Augmented views per row a live run draws from (--views N with --augment; else 0)."""
    return int(cfg.views) if getattr(cfg, "augment", None) else 0


def live_images(dataset: Any, backbone: Backbone, rows: np.ndarray, cfg: Any) -> TorchImages:
    """Item ``r`` = store row ``r`` clean; with --augment and --views N item ``v * n + r``
    = its view v, the transform extraction's --views applies (augment.ViewImages)."""
    count = live_views(cfg)
    if not count:
        return TorchImages(dataset, backbone.transform(), rows)
    from losa_cache.augment import parse_augment
    from losa_cache.data.view_images import ViewImages

    n = len(rows)
    return ViewImages(
        dataset,
        backbone.transform(),
        np.tile(rows, count + 1),
        np.repeat(np.arange(count + 1), n),
        np.tile(np.arange(n), count + 1),
        parse_augment(cfg.augment),
        backbone.preprocess,
        cfg.view_seed,
    )


def live_backbone(cfg: Any, device: torch.device) -> Backbone:
    """The backbone the live fields of ``cfg`` (a TrainConfig or SweepConfig) name."""
    return create_backbone(
        cfg.model,
        checkpoint=cfg.checkpoint,
        pretrained=cfg.pretrained,
        random_init=cfg.random_init,
        seed=cfg.init_seed,
        device=device,
        frames=getattr(cfg, "frames", None),
        inflation=getattr(cfg, "inflation", "central"),
    )


class LiveSource:
    """A backbone and a data set standing in for a store (``cfg``: a TrainConfig or a
    SweepConfig, whose live fields name them)."""

    def __init__(self, cfg: Any, device: torch.device, backbone: Backbone | None = None) -> None:
        """``backbone``: one :func:`live_backbone` already loaded (a Dask worker's, kept for
        every group it trains): this source prunes a copy of it."""
        if not (cfg.model and cfg.dataset):
            raise ValueError("--live needs --model and --dataset (the backbone runs on images)")
        self.device, self.amp_mode = device, cfg.amp
        sampling = live_sampling(cfg)
        self.backbone = live_backbone(cfg, device) if backbone is None else copy.deepcopy(backbone)
        if sampling is not None:  # part of the fingerprint, as extract records it
            self.backbone.sampling = {"stride": sampling.stride, "clip": sampling.clip}
        self.dataset = get_dataset(cfg.dataset, data_root=cfg.data_root, sampling=sampling)
        if sampling is None and isinstance(self.dataset, VideoRows):
            raise ValueError(
                f"{cfg.dataset} holds videos but {cfg.model} is an image model: "
                f"pick a video backbone ({', '.join(VIDEO_ALIASES)})"
            )
        self.task_name = self.dataset.task or "default"
        rows, splits = select_rows(self.dataset, cfg.limit, None)  # store rows -> data set rows
        self.dataset_rows = np.asarray(rows, dtype=np.int64)
        self.splits = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in splits.items()}
        self.labels = self.dataset.table.labels[self.dataset_rows].astype(np.int64)
        b = self.backbone
        self.info = SourceInfo(
            depth=b.depth,
            dim=b.dim,
            tokens=b.tokens,
            prefix_tokens=b.prefix_tokens,
            layers=tuple(range(b.depth)),
            fingerprint=b.fingerprint(),
            splits=list(splits),
            default_task=self.task_name,
            dtype=torch.float32,
            row_bytes=b.tokens * b.dim * 4,
            taps=live_taps(b.model, b.depth),
            live=True,
            frames=b.time_steps,
            views=live_views(cfg),
        )
        self.images = live_images(self.dataset, b, self.dataset_rows, cfg)
        self._pruned: int | None = None
        self._loaders: dict[tuple, tuple[DataLoader, _Planned]] = {}  # evaluation's

    def task(self, name: str | None) -> TaskData:
        if name not in (None, self.task_name):
            raise StoreError(f"unknown task {name!r}; the data set has [{self.task_name!r}]")
        return TaskData(self.task_name, self.labels, list(self.dataset.classes))

    def split_rows(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise StoreError(f"unknown split {split!r}; the data set has {list(self.splits)}")
        return self.splits[split]

    def prune(self, layers: Sequence[Key]) -> None:
        """Blocks after the last one any run reads never run (call once, before feeds)."""
        layers = [i for i in layers if i != IMAGES]
        if not layers:  # a live baseline runs its own backbone copy on the images
            return
        last = max(0, deepest_block(layers))  # embed alone: keep one block (nothing runs it)
        if self._pruned is None:
            self.backbone.prune(list(range(last + 1)))
            self._pruned = last
        elif last > self._pruned:
            raise ValueError(f"backbone already pruned after block {self._pruned}")

    def feed(
        self,
        order: RowOrder,
        rows: np.ndarray,
        layers: Sequence[Key],
        piece_rows: int,
        device: torch.device,
        workers: int,
        max_memory: int | None = None,
    ) -> LiveFeed:
        self.prune(layers)
        return LiveFeed(self, order, rows, layers, piece_rows, decoding_workers(workers))

    def loader(
        self,
        plans: Callable[[], Iterator[Any]],
        workers: int,
        key: tuple | None = None,
        items: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> tuple[DataLoader, _Planned]:
        """A loader decoding the planned pieces in ``workers`` processes. With a ``key`` (a
        sequential pass: evaluation) it is made once and keeps its workers, so periodic
        evaluation of the same rows does not start new ones each time."""
        if key in self._loaders:
            return self._loaders[key]
        sampler, kwargs = _Planned(plans, items), {}
        if workers > 0:  # zarr/timm threads in this process: never fork it
            kwargs = {
                "multiprocessing_context": worker_context(),
                "prefetch_factor": 4,
                "persistent_workers": key is not None,
            }
        made = (
            DataLoader(
                self.images,
                batch_sampler=sampler,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                **kwargs,
            ),
            sampler,
        )
        if key is not None:
            self._loaders[key] = made
        return made

    def close(self) -> None:
        """Stop the evaluation loaders' workers now (not whenever the last reference goes)."""
        for loader, _ in self._loaders.values():
            workers = getattr(loader, "_iterator", None)  # torch: no public way to stop them
            if workers is not None and hasattr(workers, "_shutdown_workers"):
                workers._shutdown_workers()
        self._loaders.clear()


class _Planned(Sampler):
    """A batch sampler over planned pieces; remembers their positions, in order. Each
    pass over it plans afresh (``plans()``), so a persistent loader can replay it."""

    def __init__(
        self,
        plans: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
        items: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """``items``: (positions, rows) -> the dataset items to load (default: the rows)."""
        self.plans, self.positions, self.items = plans, deque(), items

    def __iter__(self) -> Iterator[list[int]]:
        self.positions.clear()  # what an abandoned pass left
        for pos, rows in self.plans():
            self.positions.append((pos, rows))
            yield (rows if self.items is None else self.items(pos, rows)).tolist()


class LiveFeed:
    """Pieces of block outputs and taps computed by the backbone, in the order's visiting
    order."""

    bytes_read = 0

    def __init__(
        self,
        source: LiveSource,
        order: RowOrder,
        rows: np.ndarray,
        layers: Sequence[Key],
        piece_rows: int,
        workers: int,
    ) -> None:
        self.source, self.order, self.layers = source, order, sort_keys(layers)
        self.keep = None if np.array_equal(rows, order.rows) else keep_mask(rows)
        self.piece_rows, self.workers = int(piece_rows), max(0, int(workers))
        self.device = source.device
        self.amp = use_amp(source.amp_mode, self.device)
        self.images = 0

    def pieces(self, offset: int, loop: bool, shuffle: bool) -> Iterator[Piece]:
        def plans() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return rechunk(planned(self.order, self.keep, offset, loop, shuffle), self.piece_rows)

        key = (
            None
            if loop or shuffle
            else (  # a sequential pass (evaluation): kept
                self.order.rows.tobytes(),
                None if self.keep is None else self.keep.tobytes(),
                self.piece_rows,
                offset,
                self.workers,
            )
        )
        loader, sampler = self.source.loader(plans, self.workers, key, self._items())
        for x, _dataset_rows, ok, _errors in loader:
            pos, rows = sampler.positions.popleft()
            keep = ok.numpy().astype(bool)
            if not keep.all():  # undecodable images are left out (a store skips them too)
                x, pos, rows = x[torch.from_numpy(keep)], pos[keep], rows[keep]
                if not len(rows):
                    continue
            x = x.to(self.device, non_blocking=True)  # from pinned memory on CUDA
            self.images += len(rows)
            keys = [i for i in self.layers if i != IMAGES]  # blocks and taps
            feats = frozen_features(self.source.backbone, x, keys, self.amp) if keys else {}
            if IMAGES in self.layers:  # a live baseline: the preprocessed images themselves
                feats[IMAGES] = x
            yield Piece(pos, rows, feats)

    def _items(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """Item of each (position, row): the view the order draws (live.live_images)."""
        if self.order.views is None:
            return None
        n = len(self.source.dataset_rows)
        return lambda pos, rows: self.order.view_of(pos, rows) * n + rows

    def close(self) -> None:
        pass
