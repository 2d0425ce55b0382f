"""Live mode: the frozen backbone runs on every piece (the paper's own setting, no store).

For data too big to store, and as the benchmark's baseline. Rows are numbered as
``extract`` numbers them (same data set, same ``--limit``) and pieces follow the same
:class:`~losa_cache.train.order.RowOrder` as a store's, so with the same seed an fp32
store and live mode give the same batches (features equal up to float rounding). The
backbone runs on pieces of ``piece_rows`` images and every run of a sweep is fed from
them: one forward per image for all configs.

The backbone never takes part in training: its parameters have ``requires_grad=False``,
its forward runs under ``torch.inference_mode`` and the optimizer only ever receives the
side network's parameters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from losa_cache.backbone import Backbone, create_backbone
from losa_cache.baselines.methods import IMAGES
from losa_cache.data import TorchImages, get_dataset
from losa_cache.data.torch_dataset import worker_context
from losa_cache.extract import select_rows
from losa_cache.store import StoreError
from losa_cache.train.feed import Piece, keep_mask, planned, rechunk
from losa_cache.train.order import RowOrder
from losa_cache.train.run import use_amp
from losa_cache.train.sources import SourceInfo, TaskData

__all__ = ["LiveFeed", "LiveSource", "frozen_features"]


def frozen_features(backbone: Backbone, x: torch.Tensor, layers: Sequence[int],
                    amp: bool) -> dict[int, torch.Tensor]:
    """Block outputs {block: (B, T, D)} with no autograd history, usable as training inputs."""
    if any(p.requires_grad for p in backbone.model.parameters()):
        raise RuntimeError("live mode: the backbone must be frozen (requires_grad=False)")
    with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16,
                                                enabled=amp):
        outs = backbone.intermediates(x, list(layers))
    # inference tensors cannot be saved for backward: a clone outside inference mode can
    return {layer: out.clone() for layer, out in zip(layers, outs, strict=True)}


class LiveSource:
    """A backbone and a data set standing in for a store (``cfg``: a TrainConfig or a
    SweepConfig, whose live fields name them)."""

    def __init__(self, cfg: Any, device: torch.device) -> None:
        if not (cfg.model and cfg.dataset):
            raise ValueError("--live needs --model and --dataset (the backbone runs on images)")
        self.device, self.amp_mode = device, cfg.amp
        self.backbone = create_backbone(cfg.model, checkpoint=cfg.checkpoint,
                                        pretrained=cfg.pretrained, random_init=cfg.random_init,
                                        seed=cfg.init_seed, device=device)
        self.dataset = get_dataset(cfg.dataset, data_root=cfg.data_root)
        self.task_name = self.dataset.task or "default"
        rows, splits = select_rows(self.dataset, cfg.limit, None)  # store rows -> data set rows
        self.dataset_rows = np.asarray(rows, dtype=np.int64)
        self.splits = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in splits.items()}
        self.labels = self.dataset.table.labels[self.dataset_rows].astype(np.int64)
        b = self.backbone
        self.info = SourceInfo(depth=b.depth, dim=b.dim, tokens=b.tokens,
                               prefix_tokens=b.prefix_tokens, layers=tuple(range(b.depth)),
                               fingerprint=b.fingerprint(), splits=list(splits),
                               default_task=self.task_name, dtype=torch.float32,
                               row_bytes=b.tokens * b.dim * 4)
        self.images = TorchImages(self.dataset, b.transform(), self.dataset_rows)
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

    def prune(self, layers: Sequence[int]) -> None:
        """Blocks after the last one any run reads never run (call once, before feeds)."""
        layers = [i for i in layers if i != IMAGES]
        if not layers:  # a live baseline runs its own backbone copy on the images
            return
        last = max(layers)
        if self._pruned is None:
            self.backbone.prune(list(range(last + 1)))
            self._pruned = last
        elif last > self._pruned:
            raise ValueError(f"backbone already pruned after block {self._pruned}")

    def feed(self, order: RowOrder, rows: np.ndarray, layers: Sequence[int],
             piece_rows: int, device: torch.device, workers: int,
             max_memory: int | None = None) -> LiveFeed:
        self.prune(layers)
        return LiveFeed(self, order, rows, layers, piece_rows, workers)

    def loader(self, plans: Callable[[], Iterator[Any]], workers: int, key: tuple | None = None
               ) -> tuple[DataLoader, _Planned]:
        """A loader decoding the planned pieces in ``workers`` processes. With a ``key`` (a
        sequential pass: evaluation) it is made once and keeps its workers, so periodic
        evaluation of the same rows does not start new ones each time."""
        if key in self._loaders:
            return self._loaders[key]
        sampler, kwargs = _Planned(plans), {}
        if workers > 0:  # zarr/timm threads in this process: never fork it
            kwargs = {"multiprocessing_context": worker_context(), "prefetch_factor": 4,
                      "persistent_workers": key is not None}
        made = DataLoader(self.images, batch_sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", **kwargs), sampler
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

    def __init__(self, plans: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> None:
        self.plans, self.positions = plans, deque()

    def __iter__(self) -> Iterator[list[int]]:
        self.positions.clear()  # what an abandoned pass left
        for pos, rows in self.plans():
            self.positions.append((pos, rows))
            yield rows.tolist()


class LiveFeed:
    """Pieces of block outputs computed by the backbone, in the order's visiting order."""

    bytes_read = 0

    def __init__(self, source: LiveSource, order: RowOrder, rows: np.ndarray,
                 layers: Sequence[int], piece_rows: int, workers: int) -> None:
        self.source, self.order, self.layers = source, order, tuple(sorted(layers))
        self.keep = None if np.array_equal(rows, order.rows) else keep_mask(rows)
        self.piece_rows, self.workers = int(piece_rows), max(0, int(workers))
        self.device = source.device
        self.amp = use_amp(source.amp_mode, self.device)
        self.images = 0

    def pieces(self, offset: int, loop: bool, shuffle: bool) -> Iterator[Piece]:
        def plans() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            return rechunk(planned(self.order, self.keep, offset, loop, shuffle),
                           self.piece_rows)

        key = None if loop or shuffle else (  # a sequential pass (evaluation): kept
            self.order.rows.tobytes(), None if self.keep is None else self.keep.tobytes(),
            self.piece_rows, offset, self.workers)
        loader, sampler = self.source.loader(plans, self.workers, key)
        for x, _dataset_rows, ok, _errors in loader:
            pos, rows = sampler.positions.popleft()
            keep = ok.numpy().astype(bool)
            if not keep.all():  # undecodable images are left out (a store skips them too)
                x, pos, rows = x[torch.from_numpy(keep)], pos[keep], rows[keep]
                if not len(rows):
                    continue
            x = x.to(self.device, non_blocking=True)  # from pinned memory on CUDA
            self.images += len(rows)
            blocks = [i for i in self.layers if i != IMAGES]
            feats = frozen_features(self.source.backbone, x, blocks, self.amp) if blocks else {}
            if IMAGES in self.layers:  # a live baseline: the preprocessed images themselves
                feats[IMAGES] = x
            yield Piece(pos, rows, feats)

    def close(self) -> None:
        pass
