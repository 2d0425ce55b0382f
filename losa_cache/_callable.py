"""Modules that are also the function of the same name: ``losa_cache.train(...)``.

``losa_cache.train``, ``losa_cache.sweep`` and ``losa_cache.extract`` are modules (a
package's submodule is bound to its name on import, so a function of the same name in
``losa_cache/__init__.py`` would be replaced by the module the first time anything imports
it). Giving the module object a class with ``__call__`` makes the name work both ways:
``losa_cache.train(store=..., steps=...)`` runs :func:`losa_cache.api.train`, and
``from losa_cache.train import TrainConfig`` still imports from the module.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["make_callable"]


class CallableModule(types.ModuleType):
    """A module whose call runs the :mod:`losa_cache.api` function of its last name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("losa_cache.api")
        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(name: str) -> None:
    """Make module ``name`` (already in ``sys.modules``) callable; see the module docstring."""
    sys.modules[name].__class__ = CallableModule
