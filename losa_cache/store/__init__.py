"""The feature store: schema, reading and writing (see :mod:`losa_cache.store.schema`)."""

from losa_cache.store.quant import dequantize
from losa_cache.store.schema import CODECS, DTYPES, SCHEMA_VERSION, Layout, plan_layout
from losa_cache.store.store import (
    FeatureArray,
    FeatureStore,
    QuantizedArray,
    StoreError,
    StoreIncompleteError,
    StoreIntegrityError,
    open_store,
)
from losa_cache.store.tasks import add_task

__all__ = [
    "CODECS",
    "DTYPES",
    "SCHEMA_VERSION",
    "FeatureArray",
    "FeatureStore",
    "Layout",
    "QuantizedArray",
    "StoreError",
    "StoreIncompleteError",
    "StoreIntegrityError",
    "add_task",
    "dequantize",
    "open_store",
    "plan_layout",
]
