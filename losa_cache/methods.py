"""The one method registry: side networks and live baselines, built-in or from a package.

    register(Method("mine", impl, options=MineOptions))     # what register_side and
                                                             # register_baseline call
    get_method("lora").live                                   # trains the backbone on images
    option_fields()                                           # every method's own fields

A method declares its own settings once, as an options dataclass whose fields carry help,
range and choices (:func:`losa_cache.fields.option`); :data:`COMMON` names the settings
every run has (the run's config declares those). The run's config (``TrainConfig``) is
built from its common fields plus :func:`option_fields`, so a method's option is a flag
of ``train`` and ``sweep`` without being listed anywhere else.

Other packages add methods through the ``losa_cache.methods`` entry-point group (the way
timm and peft are extended): each entry point names a module, loaded once by
:func:`load_plugins` before the run's config is built, whose import registers its
methods (``@register_side`` / ``register_baseline``). Such a module imports from
``losa_cache.side`` / ``losa_cache.baselines`` / ``losa_cache.fields``, never from
``losa_cache.train`` (that is what is being built when it loads).
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from importlib import metadata
from typing import Any

__all__ = [
    "COMMON",
    "ENTRY_POINTS",
    "Method",
    "OptionField",
    "get_method",
    "list_methods",
    "load_plugins",
    "option_fields",
    "register",
]

#: the entry-point group third-party methods register through
ENTRY_POINTS = "losa_cache.methods"
#: settings the run's config declares for every method (a method's options may list them
#: to check their range, but cannot redeclare them)
COMMON = frozenset({"rank", "layers", "pool"})


@dataclass(frozen=True)
class Method:
    """A registered method: its implementation and what the engine asks of it."""

    name: str
    #: a SideNetwork subclass, or a live baseline's BaselineMethod
    impl: Any
    #: its own settings: a dataclass of option() fields (None: none)
    options: type | None = None
    #: True: it trains (part of) the backbone, reading images through a live backbone;
    #: False: a side network on cached (or live) block outputs
    live: bool = False
    #: the run's settings it reads besides its options (``rank``, ``layers`` ...)
    reads: tuple[str, ...] = ()
    #: the runs one config expands to, given the backbone depth (MIST: a run per k
    #: candidate); None: the config itself
    expand: Callable[[dict[str, Any], int], list[dict[str, Any]]] | None = None

    @property
    def uses(self) -> tuple[str, ...]:
        """The run settings it reads: a sweep makes one run of configs differing only in
        settings their method ignores."""
        own = tuple(f.name for f in fields(self.options)) if self.options else ()
        return tuple(dict.fromkeys((*self.reads, *own)))

    def runs(self, settings: dict[str, Any], depth: int) -> list[dict[str, Any]]:
        """The configs ``settings`` (a run's settings, by field name) train as."""
        return [settings] if self.expand is None else self.expand(settings, depth)


_METHODS: dict[str, Method] = {}
_FROZEN: dict[str, Field] | None = None  # option_fields() once configs were built


def register(method: Method) -> Method:
    """Register ``method``; a name already taken, or an option that clashes with another
    method's (same name, another type or default), is refused."""
    if method.name in _METHODS:
        old = _METHODS[method.name].impl
        where = getattr(old, "__module__", "?")
        raise ValueError(
            f"method {method.name!r} is already registered (by {where}); pick another name"
        )
    new = _own_fields(method)
    if _FROZEN is not None and (late := sorted(set(new) - set(_FROZEN))):
        raise ValueError(
            f"method {method.name!r} adds options {late} after the run configs were built: "
            f"register it through the {ENTRY_POINTS!r} entry point (or import it before "
            "losa_cache.train)"
        )
    for name, f in new.items():
        _check_same(method.name, f, _find(name))
    _METHODS[method.name] = method
    return method


def _own_fields(method: Method) -> dict[str, Field]:
    if method.options is None:
        return {}
    return {f.name: f for f in fields(method.options) if f.name not in COMMON}


def _find(name: str) -> tuple[str, Field] | None:
    for m in _METHODS.values():
        if (f := _own_fields(m).get(name)) is not None:
            return m.name, f
    return None


def _check_same(method: str, f: Field, other: tuple[str, Field] | None) -> None:
    if other is None:
        return
    owner, g = other
    if (f.type, f.default) != (g.type, g.default) or f.default_factory is not g.default_factory:
        raise ValueError(
            f"method {method!r} declares option {f.name!r} ({f.type}, default {f.default!r}) "
            f"unlike method {owner!r} ({g.type}, default {g.default!r}): one option, one "
            "meaning; rename it"
        )


def get_method(name: str) -> Method:
    """The method registered as ``name``; unknown: an error listing the registered ones."""
    load_plugins()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {list_methods()}") from None


def list_methods(live: bool | None = None) -> list[str]:
    """Registered names in registration order (built-ins first); ``live`` filters."""
    load_plugins()
    return [n for n, m in _METHODS.items() if live is None or m.live == live]


@dataclass(frozen=True)
class OptionField:
    """A method option as a run's config takes it: the field, its resolved type and the
    methods that read it."""

    field: Field
    hint: Any
    methods: tuple[str, ...]


def option_fields(live: bool | None = None) -> dict[str, OptionField]:
    """Every method's own option fields, by name (the run's common settings excluded);
    building the run's config from them freezes the set (see :func:`register`)."""
    global _FROZEN
    load_plugins()
    out: dict[str, OptionField] = {}
    for m in _METHODS.values():
        if live is not None and m.live != live:
            continue
        hints = typing.get_type_hints(m.options) if m.options else {}
        for name, f in _own_fields(m).items():
            old = out.get(name)
            out[name] = OptionField(f, hints[name], (*old.methods, m.name) if old else (m.name,))
    if live is None:
        _FROZEN = {n: o.field for n, o in out.items()}
    return out


_LOADED = False


def load_plugins() -> None:
    """Import every ``losa_cache.methods`` entry point once; one that fails to load is
    named in a warning and left out (the built-in methods still work)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in metadata.entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the tool
            warnings.warn(
                f"method plugin {ep.name!r} ({ep.value}) failed to load and is "
                f"left out: {type(e).__name__}: {e}; fix or uninstall its package",
                stacklevel=2,
            )
