"""The side-network registry: ``@register_side(name)`` and the single way in, ``create_side``.

Adding a method = one module with a :class:`~losa_cache.side.base.SideNetwork`
subclass decorated with ``@register_side("name")``, imported from
``losa_cache/side/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from losa_cache.side.base import SideNetwork

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["create_side", "get_side_class", "learned_params", "list_sides", "register_side"]

S = TypeVar("S", bound=type[SideNetwork])

_SIDES: dict[str, type[SideNetwork]] = {}


def register_side(name: str) -> Callable[[S], S]:
    """Class decorator registering a :class:`SideNetwork` under ``name``; refuses duplicates."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, SideNetwork)):
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


def get_side_class(name: str) -> type[SideNetwork]:
    """The class registered under ``name``."""
    try:
        return _SIDES[name]
    except KeyError:
        raise ValueError(f"unknown side network {name!r}; registered: {list_sides()}") from None


def create_side(config: SideConfig) -> SideNetwork:
    """Build the side network (plus its head) that ``config.method`` names."""
    return get_side_class(config.method)(config)


def learned_params(config: SideConfig) -> int:
    """Learned side-network parameters (head excluded, as in the paper), without building it."""
    return get_side_class(config.method).count_learned_params(config)
