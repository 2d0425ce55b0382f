"""Typer options generated from a config dataclass: every field a flag, help from its metadata.

    params = config_params(TrainConfig)                   # one option per field
    train = command(body, [*params, *extra], doc)         # body(**values) gets plain values

Types come from the field annotations, defaults from the field defaults, help texts and
choices (as enums: ``--help`` lists them) from the field metadata
(:mod:`losa_cache.fields`), so a new field is a new flag and no help can drift.
List fields become comma-separated strings (the command parses them).
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from typing import Annotated, Any

import typer

from losa_cache.fields import choices_of

__all__ = ["command", "config_params", "param", "plain"]


def param(name: str, annotation: Any, default: Any, help: str) -> inspect.Parameter:
    """One keyword option ``--name`` (underscores become dashes)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(help=help)])


def config_params(cls: type, skip: Iterable[str] = (),
                  override: dict[str, tuple[Any, Any]] | None = None) -> list[inspect.Parameter]:
    """An option per field of ``cls`` (``override``: name -> (annotation, default))."""
    hints, override, out = typing.get_type_hints(cls), override or {}, []
    for f in fields(cls):
        if f.name in skip:
            continue
        name = f.metadata.get("cli") or f.name
        default = None if f.default is MISSING else f.default
        annotation = hints[f.name]
        if typing.get_origin(annotation) is list or list in typing.get_args(annotation) or any(
                typing.get_origin(a) is list for a in typing.get_args(annotation)):
            annotation, default = str | None, None  # comma-separated
        elif (valid := choices_of(f)) is not None:
            annotation = enum.Enum(f"{name.title().replace('_', '')}Choice",
                                   {v: v for v in valid}, type=str)
            default = annotation(default)
        annotation, default = override.get(name, (annotation, default))
        out.append(param(name, annotation, default, f.metadata["help"]))
    return out


def command(body: Callable[..., None], params: list[inspect.Parameter], doc: str
            ) -> Callable[..., None]:
    """``body`` with the generated signature typer reads."""

    def run(**kwargs: Any) -> None:
        body(**plain(kwargs))

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__, run.__name__ = doc, body.__name__.lstrip("_")
    return run


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Enum members -> their values."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}
