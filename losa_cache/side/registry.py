"""The side-network registry: ``@register_side(name)`` and the single way in, ``create_side``.

Adding a method = one module with a :class:`~losa_cache.side.base.SideNetwork`
subclass decorated with ``@register_side("name")``, imported from
``losa_cache/side/__init__.py``. This module imports no other side module (the config
validates its method here, the networks register here): the import graph has no circles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["create_side", "get_side_class", "learned_params", "list_sides", "register_side"]

S = TypeVar("S", bound=type)

_SIDES: dict[str, Any] = {}  # name -> SideNetwork subclass


def register_side(name: str) -> Callable[[S], S]:
    """Class decorator registering a side network class under ``name``; refuses duplicates."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and callable(getattr(cls, "blocks", None))
                and hasattr(cls, "count_learned_params")):
            raise TypeError(f"@register_side({name!r}) needs a SideNetwork subclass, got {cls!r}")
        if name in _SIDES:
            old = _SIDES[name]
            raise ValueError(
                f"side network {name!r} is already registered by "
                f"{old.__module__}.{old.__qualname__}; pick another name"
            )
        _SIDES[name] = cls
        return cls

    return decorate


def list_sides() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_SIDES)


def get_side_class(name: str) -> Any:
    """The SideNetwork subclass registered under ``name``."""
    try:
        return _SIDES[name]
    except KeyError:
        raise ValueError(f"unknown side network {name!r}; registered: {list_sides()}") from None


def create_side(config: Any) -> Any:
    """Build the side network (plus its head) that ``config.method`` (a SideConfig) names."""
    return get_side_class(config.method)(config)


def learned_params(config: Any) -> int:
    """Learned side-network parameters (head excluded, as in the paper), without building it."""
    return int(get_side_class(config.method).count_learned_params(config))
