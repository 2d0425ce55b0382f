"""losa-cache: run a frozen ViT once into a Zarr feature store, then train many LoSA
side networks (Mercea et al., "Time-, Memory- and Parameter-Efficient Visual
Adaptation", CVPR 2024) from it without running the backbone again.

Data flow: :mod:`~losa_cache.data` -> :mod:`~losa_cache.backbone` ->
:mod:`~losa_cache.extract` -> :mod:`~losa_cache.store` -> :mod:`~losa_cache.train`
(reader, trainer) with :mod:`~losa_cache.side` networks -> adapter / predict.
"""

from __future__ import annotations

import os

# Before torch is imported: OpenMP threads that spin-wait between parallel regions starve
# the reader's I/O threads on CPU (streaming training fell from ~600 to ~2 img/s on a
# loaded 2-core machine). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FeatureStore", "StoreError", "__version__", "extract", "open_store", "sweep", "train"]

#: Public names, imported on first use: ``import losa_cache`` (every command's first
#: import, ``losa-cache --help`` included) loads neither torch nor zarr.
_LAZY = {"FeatureStore": "losa_cache.store", "StoreError": "losa_cache.store",
         "open_store": "losa_cache.store"}  # fmt: skip
#: ``losa_cache.extract(...)``, ``.train(...)``, ``.sweep(...)`` (losa_cache/api.py): each a
#: module that is also callable (losa_cache/_callable.py), imported on first use
_MODULES = ("extract", "train", "sweep", "api")

if TYPE_CHECKING:
    from losa_cache.store import FeatureStore, StoreError, open_store


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MODULES:
        import importlib

        return importlib.import_module(f"losa_cache.{name}")
    raise AttributeError(f"module 'losa_cache' has no attribute {name!r}")
