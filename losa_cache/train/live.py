"""Live mode: the frozen backbone runs on every batch (the paper's own setting, no store).

For stores that would be too big, and as the benchmark's baseline. Rows are numbered as
``extract`` numbers them (same data set, same ``--limit``), batches come from the same
:class:`~losa_cache.train.order.RowOrder` as the cached reader, so with the same
chunking, seed and an fp32 store, cached and live training see identical batches.

The backbone never takes part in training: its parameters have ``requires_grad=False``,
its forward runs under ``torch.inference_mode`` and the optimizer only ever receives the
side network's parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from losa_cache.backbone import Backbone, create_backbone
from losa_cache.data import TorchImages, get_dataset
from losa_cache.data.torch_dataset import worker_context
from losa_cache.extract import select_rows
from losa_cache.store import StoreError
from losa_cache.store.schema import plan_layout
from losa_cache.train.cache import CacheChoice
from losa_cache.train.config import TrainConfig
from losa_cache.train.order import (
    RowOrder,
    StreamPosition,
    buffer_chunks_for,
    cut_batches,
    default_buffer_rows,
)
from losa_cache.train.reader import Batch
from losa_cache.train.sources import SourceInfo, pick_device

__all__ = ["LiveReader", "LiveSource", "frozen_features"]


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
    """A backbone and a data set standing in for a store."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.device = cfg, pick_device(cfg.device)
        self.backbone = create_backbone(cfg.model, checkpoint=cfg.checkpoint,
                                        pretrained=cfg.pretrained, random_init=cfg.random_init,
                                        seed=cfg.init_seed, device=self.device)
        dataset = get_dataset(cfg.dataset, data_root=cfg.data_root)
        task = dataset.task or "default"
        if cfg.task not in (None, task):
            raise StoreError(f"unknown task {cfg.task!r}; data set {cfg.dataset} has [{task!r}]")
        rows, splits = select_rows(dataset, cfg.limit, None)  # store rows -> data set rows
        self.dataset_rows = np.asarray(rows, dtype=np.int64)
        self.splits = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in splits.items()}
        self.labels = dataset.table.labels[np.asarray(rows, dtype=np.int64)].astype(np.int64)
        b = self.backbone
        self.info = SourceInfo(depth=b.depth, dim=b.dim, tokens=b.tokens,
                               prefix_tokens=b.prefix_tokens, layers=tuple(range(b.depth)),
                               task=task, classes=list(dataset.classes),
                               fingerprint=b.fingerprint(), splits=list(splits))
        self.chunk_rows = cfg.live_chunk_rows or plan_layout(
            len(rows), b.tokens, b.dim, self.info.layers, "float16").chunk_rows
        self.images = TorchImages(dataset, b.transform(), self.dataset_rows)
        self._pruned: tuple[int, ...] | None = None

    def rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self.splits:
            raise StoreError(f"unknown split {split!r}; the data set has {list(self.splits)}")
        rows = self.splits[split]
        keep = self.labels[rows] >= 0
        return rows[keep], self.labels[rows][keep]

    def reader(self, rows: np.ndarray, labels: np.ndarray, layers: Sequence[int],
               batch_size: int, seed: int, device: torch.device, cache: str,
               buffer_rows: int | None) -> LiveReader:
        layers = tuple(sorted(layers))
        if self._pruned is None:
            self.backbone.prune(list(layers))  # blocks after the last needed one never run
            self._pruned = layers
        elif not set(layers) <= set(range(max(self._pruned) + 1)):
            raise ValueError(f"backbone already pruned for blocks {self._pruned}")
        return LiveReader(self, rows, labels, layers, batch_size, seed, buffer_rows)

    def close(self) -> None:
        pass


class _Planned(Sampler):
    """A batch sampler over planned batches of store rows (= TorchImages indices)."""

    def __init__(self, batches: Iterator[np.ndarray]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)


class LiveReader(StreamPosition):
    """Same interface as :class:`~losa_cache.train.reader.StoreReader`, features computed."""

    def __init__(self, source: LiveSource, rows: np.ndarray, labels: np.ndarray,
                 layers: tuple[int, ...], batch_size: int, seed: int,
                 buffer_rows: int | None) -> None:
        self.source, self.layers, self.batch_size = source, layers, int(batch_size)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.device = source.device
        info = source.info
        row_bytes = info.tokens * info.dim * 2 * len(layers)  # as an fp16 store would hold
        buffer_rows = buffer_rows or default_buffer_rows(self.batch_size, len(self.rows),
                                                         row_bytes)
        num_chunks = len(np.unique(self.rows // source.chunk_rows))
        chunks = buffer_chunks_for(len(self.rows), num_chunks, buffer_rows)
        self.order = RowOrder(self.rows, source.chunk_rows, chunks, seed)
        self.amp = source.cfg.amp == "bf16" or (source.cfg.amp == "auto"
                                                and self.device.type == "cuda")
        self.cache_choice = CacheChoice("none", 0, "live mode: the backbone runs on every batch")
        self.offset, self.bytes_read, self.images = 0, 0, 0
        self._eval_loaders: dict[int, DataLoader] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, offset: int = 0) -> Iterator[Batch]:
        """Endless training batches from stream position ``offset`` (rows) on."""
        self.offset = int(offset)
        plan = self._plan(self.offset, True, True, self.batch_size)
        for batch in self._run(self._loader(_Planned(plan), persistent=False)):
            self.offset += self.batch_size
            yield batch

    def eval_batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """One sequential pass; its decoding workers stay up for the next evaluation."""
        size = batch_size or self.batch_size
        if size not in self._eval_loaders:
            plan = [b.tolist() for b in self._plan(0, False, False, size)]
            self._eval_loaders[size] = self._loader(plan, persistent=True)
        yield from self._run(self._eval_loaders[size])

    def _plan(self, offset: int, loop: bool, shuffle: bool, size: int) -> Iterator[np.ndarray]:
        pieces = ((None, w, skip) for w, skip in self.order.windows_from(offset, loop, shuffle))
        for segments in cut_batches(pieces, size):
            yield np.concatenate([w.ordered[a:b] for _, w, a, b in segments])

    def _loader(self, batch_sampler: Any, persistent: bool) -> DataLoader:
        workers = max(0, self.source.cfg.workers)
        kwargs: dict[str, Any] = {}
        if workers > 0:  # zarr/timm threads in this process: never fork it
            kwargs = {"multiprocessing_context": worker_context(), "prefetch_factor": 4,
                      "persistent_workers": persistent}
        return DataLoader(self.source.images, batch_sampler=batch_sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", **kwargs)

    def _run(self, loader: DataLoader) -> Iterator[Batch]:
        src = self.source
        for x, dataset_rows, ok, _errors in loader:
            keep = ok.bool()
            rows = torch.from_numpy(np.searchsorted(src.dataset_rows, dataset_rows.numpy()))
            if not keep.all():  # undecodable images are left out (a store skips them too)
                x, rows = x[keep], rows[keep]
                if not len(rows):
                    continue
            x = x.to(self.device, non_blocking=True)  # from pinned memory on CUDA
            self.images += len(rows)
            feats = frozen_features(src.backbone, x, self.layers, self.amp)
            labels = torch.from_numpy(src.labels[rows.numpy()]).to(self.device)
            yield Batch(feats, labels, rows)

    def stats(self) -> dict:
        return {"bytes_read": 0, "images_decoded": self.images, "rows": len(self.rows),
                "cache": self.cache_choice.to_dict(), "buffer_chunks": self.order.buffer_chunks,
                "chunk_rows": self.order.chunk_rows}

    def close(self) -> None:
        self._eval_loaders.clear()  # persistent decoding workers exit with their loaders
