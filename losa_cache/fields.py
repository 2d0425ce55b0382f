"""Config fields that carry their own help, range and choices (peft/HF style).

    steps: int | None = option(None, "Optimizer steps.", min=1)

The metadata is the single source: ``check_fields`` validates a config from it in
``__post_init__`` (one-line errors that name the flag and the valid range or choices),
and the CLI generates its ``train``/``sweep`` flags from it, so no flag can be missing
and no help text can drift.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

from losa_cache import checks
from losa_cache.checks import Bound, range_error

__all__ = [
    "PANELS",
    "UNITS",
    "check_fields",
    "choices_of",
    "compose",
    "flag",
    "inherit",
    "metadata",
    "option",
    "parse_list",
    "size_in",
]

#: The help panels of the generated flags, in the order ``--help`` shows them (a field
#: without a panel is a core option: the first panel, "Options").
PANELS = (
    "Method",
    "Optimisation",
    "Schedule",
    "Data",
    "Output",
    "Performance",
    "Costs",
    "Live",
    "Live video",
    "Backbone",
    "Store",
    "Views",
    "Video",
    "Limits",
    "Cluster",
)
#: Units of size fields: a plain number is in the unit, ``300MB``/``2GiB`` are converted.
UNITS = {"bytes": 1, "MiB": 2**20}


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    min: float | None = None,
    above: float | None = None,
    below: float | None = None,
    max: Bound | None = None,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    factory: Callable[[], Any] | None = None,
    cli: str | None = None,
    panel: str | None = None,
    unit: str | None = None,
    **extra: Any,
) -> Any:
    """A dataclass field with help text, an allowed range (``v >= min``, ``v > above``,
    ``v < below``, ``v <= max``: a number, or a function giving (bound, why) such as
    :func:`losa_cache.checks.max_workers`), allowed ``choices`` (or a function giving them)
    and, for the CLI, the flag's name when it differs from the field's (``cli``), its help
    panel (one of :data:`PANELS`; none: a core option) and, for a size, its ``unit`` (one
    of :data:`UNITS`: the flag also takes ``300MB``, ``2GiB``); ``extra`` keys are kept as
    they are (``argument=True``: a positional argument; a config's own keys, such as
    ExtractConfig's ``identity``).
    Integers must fit in 64 bits and floats be finite whatever the range."""
    meta = metadata(
        help,
        min=min,
        above=above,
        below=below,
        max=max,
        choices=choices,
        cli=cli,
        panel=panel,
        unit=unit,
        **extra,
    )
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def metadata(help: str, **rules: Any) -> dict[str, Any]:
    """The metadata :func:`option` stores (for ``field(default_factory=...)`` fields): the
    known rules (None when not given) and any other key as given."""
    keys = ("min", "above", "below", "max", "choices", "cli", "panel", "unit")
    if rules.get("panel") not in (None, *PANELS):
        raise ValueError(f"unknown help panel {rules['panel']!r}; one of {PANELS}")
    return {"help": help, **rules, **{k: rules.get(k) for k in keys}}


def inherit(cls: type, name: str) -> Any:
    """A field like ``cls``'s field ``name`` (default, help, range, panel): the same
    option in two configs (extract's and the sweep's ``--cluster``) says one thing."""
    (f,) = (f for f in fields(cls) if f.name == name)
    return field(default=f.default, metadata=dict(f.metadata))


def compose(base: type, options: dict[str, Any], panel: str) -> type:
    """``base`` (a dataclass) extended by the methods' option fields (``options``: name ->
    :class:`losa_cache.methods.OptionField`), each in help ``panel``, its help naming the
    methods that read it. The result takes ``base``'s name and module (pickle finds it)."""
    own = {f.name for f in fields(base)}
    spec = []
    for name, o in options.items():
        if name in own:
            continue
        f, who = o.field, ", ".join(o.methods)
        help = f.metadata.get("help", "")
        meta = {
            **f.metadata,
            "panel": panel,
            "help": help if help.startswith(o.methods[0] + ":") else f"{who}: {help}",
        }
        spec.append(
            (
                name,
                o.hint,
                field(default=f.default, metadata=meta)
                if f.default_factory is MISSING
                else field(default_factory=f.default_factory, metadata=meta),
            )
        )
    cls = dataclasses.make_dataclass(base.__name__, spec, bases=(base,))
    cls.__module__, cls.__qualname__, cls.__doc__ = base.__module__, base.__qualname__, base.__doc__
    return cls


def flag(f: Field) -> str:
    """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
    return checks.flag(f.metadata.get("cli") or f.name)


def choices_of(f: Field) -> list[str] | None:
    c = f.metadata.get("choices")
    return None if c is None else list(c() if callable(c) else c)


def check_fields(obj: Any) -> None:
    """Every field's range and choices, as its metadata states them."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        valid = choices_of(f)
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None:  # in a list: "the default"
                continue
            if valid is not None and v not in valid:
                name = (f.metadata.get("cli") or f.name).replace("_", " ")
                raise ValueError(f"unknown {name} {v!r} ({flag(f)}); choose one of {valid}")
            _check_number(f, v, hints[f.name])


def _check_number(f: Field, v: Any, hint: Any) -> None:
    integer = _is_int(hint)
    if not integer and not _is_float(hint):
        return
    lo, above, below, high = (f.metadata.get(k) for k in ("min", "above", "below", "max"))
    if not integer and lo is above is below is high is None:
        return  # a float field without a range checks itself (alpha_init: finite)
    error = range_error(flag(f), v, integer=integer, low=lo, above=above, below=below, high=high)
    if error is not None:
        raise ValueError(error)


def _is_int(hint: Any) -> bool:
    """``int``, ``int | None``, ``list[int]``: integer values."""
    if hint is int:
        return True
    return any(_is_int(a) for a in typing.get_args(hint) if a is not type(None))


def _is_float(hint: Any) -> bool:
    """``float``, ``float | None``, ``list[float | None]``: number values."""
    if hint is float:
        return True
    return any(_is_float(a) for a in typing.get_args(hint) if a is not type(None))


def size_in(f: Field, text: str | int | None) -> int | None:
    """A size flag's value in its field's unit: a plain number is in the unit already, a
    size with a unit (``300MB``) is rounded down to whole units, so a bound never grows."""
    if text is None:
        return None
    from losa_cache.checks import parse_size

    unit = UNITS[f.metadata["unit"]]
    value = parse_size(text, plain=unit) // unit
    if unit > 1 and value < 1:
        raise ValueError(
            f"{flag(f)} {text!r} is under 1 {f.metadata['unit']}; give e.g. 300MB or 1GiB"
        )
    return value


def parse_list(f: Field, hint: Any, text: str) -> list[Any]:
    """A list field's command-line text: comma-separated values (or the field's own
    ``parse``, for values that hold commas), each of the list's element type; ``none``
    is the default where the element may be None."""
    parse = f.metadata.get("parse")
    parts = parse(text) if parse else [p.strip() for p in text.split(",") if p.strip()]
    (element,) = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    element = typing.get_args(element)[0] if typing.get_origin(element) is list else element
    return [_value(f, element, p) for p in parts]


def _value(f: Field, hint: Any, text: str) -> Any:
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if text.lower() in ("none", "default") and type(None) in typing.get_args(hint):
        return None
    kind = kinds[0]
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
                text.lower()
            ]
        return kind(text) if kind in (int, float) else text
    except (KeyError, ValueError):
        want = {bool: "true or false", int: "integers", float: "numbers"}[kind]
        raise ValueError(f"{flag(f)} takes comma-separated {want}, got {text!r}") from None
