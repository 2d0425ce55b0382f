"""Where training batches come from: a feature store, or (live.py) a backbone on images.

Both give the same description (:class:`SourceInfo`), the same row numbering (store
rows), labelled rows per split, and readers with the same ``batches``/``eval_batches``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from losa_cache.side import SideConfig, create_side
from losa_cache.store import FeatureStore, StoreError, open_store
from losa_cache.train.config import TrainConfig
from losa_cache.train.reader import StoreReader, labelled_rows

__all__ = ["DataSource", "SourceInfo", "StoreSource", "build_side_config", "open_source",
           "pick_device", "resolve_splits"]

SPLIT_DEFAULTS = {"train": ("train", "train800"), "val": ("val", "val200", "validation"),
                  "test": ("test",)}


@dataclass(frozen=True)
class SourceInfo:
    """The backbone behind the features and the labelling trained on."""

    depth: int
    dim: int
    tokens: int
    prefix_tokens: int
    layers: tuple[int, ...]  # blocks available
    task: str
    classes: list[str]
    fingerprint: dict[str, Any]
    splits: list[str]


class DataSource(Protocol):
    info: SourceInfo

    def rows(self, split: str) -> tuple[np.ndarray, np.ndarray]: ...

    def reader(self, rows: np.ndarray, labels: np.ndarray, layers: Sequence[int],
               batch_size: int, seed: int, device: torch.device, cache: str,
               buffer_rows: int | None) -> Any: ...

    def close(self) -> None: ...


def resolve_splits(cfg: TrainConfig, available: Sequence[str]) -> dict[str, str | None]:
    """train/val/test split names: explicit ones must exist; auto picks the usual names."""
    out: dict[str, str | None] = {}
    for role, given in (("train", cfg.train_split), ("val", cfg.val_split),
                        ("test", cfg.test_split)):
        if given == "none" and role != "train":
            out[role] = None
        elif given == "auto":
            out[role] = next((s for s in SPLIT_DEFAULTS[role] if s in available), None)
        elif given in available:
            out[role] = given
        else:
            raise StoreError(f"unknown {role} split {given!r}; available splits: {list(available)}")
    if out["train"] is None:
        raise StoreError(f"no training split: none of {list(SPLIT_DEFAULTS['train'])} exists; "
                         f"pass --train-split, one of {list(available)}")
    return out


class StoreSource:
    """Batches read from a complete feature store."""

    def __init__(self, cfg: TrainConfig, storage_options: dict | None = None) -> None:
        self.store: FeatureStore = open_store(cfg.store, storage_options)
        self.store.require_complete()
        task = cfg.task or self.store.default_task
        classes = self.store.classes(task)  # StoreError listing the tasks if unknown
        s = self.store
        self.task, self.workers = task, cfg.workers
        self.info = SourceInfo(
            depth=s.depth, dim=s.layout.dim, tokens=s.layout.tokens,
            prefix_tokens=int(s.token_layout.get("prefix_tokens", 1)), layers=tuple(s.layers),
            task=task, classes=classes, fingerprint=s.fingerprint, splits=list(s.manifest.splits))

    def rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return labelled_rows(self.store, split, self.task)

    def reader(self, rows: np.ndarray, labels: np.ndarray, layers: Sequence[int],
               batch_size: int, seed: int, device: torch.device, cache: str,
               buffer_rows: int | None) -> StoreReader:
        return StoreReader(self.store, rows, labels, layers, batch_size, seed=seed, device=device,
                           cache=cache, buffer_rows=buffer_rows, workers=self.workers)

    def close(self) -> None:
        pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def open_source(cfg: TrainConfig, storage_options: dict | None = None) -> DataSource:
    """The store (fsspec options for URLs kept out of the saved config), or live mode."""
    if cfg.live:
        from losa_cache.train.live import LiveSource

        return LiveSource(cfg)
    return StoreSource(cfg, storage_options)


def build_side_config(cfg: TrainConfig, info: SourceInfo) -> SideConfig:
    """The side network for these features; its blocks must be available."""
    spec = ",".join(map(str, info.layers)) if cfg.layers == "store" else cfg.layers
    side = SideConfig(num_layers=info.depth, dim=info.dim, tokens=info.tokens,
                      num_classes=len(info.classes), method=cfg.method, rank=cfg.rank,
                      layers=spec, prefix_tokens=info.prefix_tokens, pool=cfg.pool)
    need = create_side(side).required_layers
    missing = sorted(set(need) - set(info.layers))
    if missing:
        raise StoreError(
            f"{cfg.method} with --layers {cfg.layers} needs blocks {list(need)}, but the store "
            f"has no blocks {missing}; it holds blocks {list(info.layers)} of {info.depth} "
            "(choose --layers among those, or re-extract with the blocks you need)")
    return side
