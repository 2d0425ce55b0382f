"""Training side networks from a feature store (or live): reader, trainer, live mode.

    from losa_cache.train import TrainConfig, train
    metrics = train(TrainConfig(store="stores/demo.zarr", method="losa", rank=16, steps=300,
                                out="runs/demo-losa"))

Modules: ``order`` (batch order), ``reader`` (store streaming + caches), ``cache``
(``--cache`` policy), ``config`` (``TrainConfig``), ``trainer`` (the loop), ``live``
(backbone on every batch), ``checkpoint`` (checkpoints and metrics files).
"""

from __future__ import annotations

from losa_cache.train.cache import CacheChoice, choose_cache
from losa_cache.train.config import TrainConfig
from losa_cache.train.order import RowOrder
from losa_cache.train.reader import Batch, StoreReader, labelled_rows
from losa_cache.train.trainer import NonFiniteLossError, evaluate, train

__all__ = [
    "Batch",
    "CacheChoice",
    "NonFiniteLossError",
    "RowOrder",
    "StoreReader",
    "TrainConfig",
    "choose_cache",
    "evaluate",
    "labelled_rows",
    "train",
]
