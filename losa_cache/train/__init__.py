"""Training side networks from a feature store (or live): one engine for train and sweep.

    from losa_cache.train import TrainConfig, train
    metrics = train(TrainConfig(store="stores/demo.zarr", method="losa", rank=16, steps=300,
                                out="runs/demo-losa"))

Modules, in data-flow order: ``order`` (batch order), ``feed`` (pieces, consumers, the
memory cache), ``reader`` (store streaming), ``live`` (backbone on every piece),
``sources`` (store or live), ``run`` (one config: model, optimizer, step, state),
``batching`` (loop or vmap), ``engine`` (the tick loop, cadence, evaluation),
``trainer`` (``train`` = the engine over one run), ``config``, ``cache``, ``checkpoint``.
"""

from __future__ import annotations

from losa_cache._callable import make_callable
from losa_cache.train.cache import CacheChoice, choose_cache
from losa_cache.train.config import TrainConfig
from losa_cache.train.order import RowOrder
from losa_cache.train.reader import Batch, StoreReader, labelled_rows
from losa_cache.train.run import NonFiniteLossError
from losa_cache.train.trainer import train

__all__ = [
    "Batch",
    "CacheChoice",
    "NonFiniteLossError",
    "RowOrder",
    "StoreReader",
    "TrainConfig",
    "choose_cache",
    "labelled_rows",
    "train",
]


make_callable(__name__)  # losa_cache.train(...): losa_cache/api.py
