"""The side-network registry: ``@register_side(name)`` and the single way in, ``create_side``.

Adding a method = one module with a :class:`~losa_cache.side.base.SideNetwork`
subclass decorated with ``@register_side("name")``, imported from
``losa_cache/side/__init__.py``. This module imports no other side module (the config
validates its method here, the networks register here): the import graph has no circles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from losa_cache.methods import Method, get_method, list_methods, register

__all__ = ["create_side", "get_side_class", "learned_params", "list_sides", "register_side"]

S = TypeVar("S", bound=type)


def register_side(name: str) -> Callable[[S], S]:
    """Class decorator registering a side network class under ``name`` in the one method
    registry (:mod:`losa_cache.methods`); refuses duplicates."""

    def decorate(cls: S) -> S:
        if not (
            isinstance(cls, type)
            and callable(getattr(cls, "blocks", None))
            and hasattr(cls, "count_learned_params")
        ):
            raise TypeError(f"@register_side({name!r}) needs a SideNetwork subclass, got {cls!r}")
        register(Method(name, cls, options=cls.options, expand=getattr(cls, "expand", None)))
        return cls

    return decorate


def list_sides() -> list[str]:
    """Registered side-network names, sorted."""
    return sorted(list_methods(live=False))


def get_side_class(name: str) -> Any:
    """The SideNetwork subclass registered under ``name``."""
    if name not in list_methods(live=False):
        raise ValueError(f"unknown side network {name!r}; registered: {list_sides()}")
    return get_method(name).impl


def create_side(config: Any) -> Any:
    """Build the side network (plus its head) that ``config.method`` (a SideConfig) names."""
    return get_side_class(config.method)(config)


def learned_params(config: Any) -> int:
    """Learned side-network parameters (head excluded, as in the paper), without building it."""
    return int(get_side_class(config.method).count_learned_params(config))
