"""Typer options generated from a config dataclass: every field a flag, help from its metadata.

    params = config_params(TrainConfig)                   # one option per field
    train = command(body, [*params, *extra], doc)         # body(**values) gets plain values

Types come from the field annotations, defaults from the field defaults, help texts and
choices (as enums: ``--help`` lists them) from the field metadata
(:mod:`losa_cache.fields`), so a new field is a new flag and no help can drift.
List fields become comma-separated strings (the command parses them); size fields
(metadata ``unit``) take ``300MB``/``2GiB`` as well as a number in their unit
(:func:`sizes` converts them). Flags sit in their field's help panel, core ones first,
panels in :data:`losa_cache.fields.PANELS` order.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from typing import Annotated, Any

import typer

from losa_cache.fields import PANELS, choices_of, flag, parse_list, size_in

#: Choices longer than this ("a|b|c") show as <choice> and are listed in the help instead:
#: a wide type column would cut the flag names at 80 columns.
CHOICES_WIDTH = 14

__all__ = ["build", "command", "config_params", "lists", "output_params", "param", "plain", "sizes"]


def param(
    name: str,
    annotation: Any,
    default: Any,
    help: str,
    panel: str | None = None,
    flags: tuple[str, ...] = (),
    metavar: str | None = None,
    argument: bool = False,
) -> inspect.Parameter:
    """One keyword option ``--name`` (underscores become dashes; or ``flags``), in help
    ``panel`` (None: the core options); ``argument``: a positional argument instead.
    ``default`` :data:`inspect.Parameter.empty`: required."""
    if argument:
        option = typer.Argument(help=help, rich_help_panel=panel, metavar=metavar)
    else:
        option = typer.Option(*flags, help=help, rich_help_panel=panel, metavar=metavar)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, option],
    )


def config_params(
    cls: type, skip: Iterable[str] = (), override: dict[str, tuple[Any, Any]] | None = None
) -> list[inspect.Parameter]:
    """An option per field of ``cls`` (``override``: name -> (annotation, default)), core
    options first, then panel by panel. A field without a default is a required option
    (metadata ``argument``: a positional argument)."""
    hints, override, out = typing.get_type_hints(cls), override or {}, []
    for f in fields(cls):
        if f.name in skip:
            continue
        name, argument = f.metadata.get("cli") or f.name, bool(f.metadata.get("argument"))
        default, valid, metavar = f.default, None, None
        if default is MISSING:
            default = None if f.default_factory is not MISSING else inspect.Parameter.empty
        annotation = hints[f.name]
        if argument:
            pass  # as typed: a list takes several values
        elif _is_list(annotation):
            metavar = _list_metavar(annotation)
            annotation, default = str | None, None  # comma-separated
        elif f.metadata.get("unit"):
            annotation, default = str | None, None  # 300MB or a number: sizes()
        elif (valid := choices_of(f)) is not None:
            annotation = enum.Enum(
                f"{name.title().replace('_', '')}Choice", {v: v for v in valid}, type=str
            )
            default = default if default in (None, inspect.Parameter.empty) else annotation(default)
        annotation, default = override.get(name, (annotation, default))
        help = f.metadata["help"]
        if valid is not None and len("|".join(valid)) > CHOICES_WIDTH:  # a name column: uncut
            help, metavar = f"{help} One of: {', '.join(valid)}.", "<choice>"
        # a flag that is off by default is only --flag (no --no-flag column to squeeze)
        flags = (flag(f),) if annotation is bool and default is False else ()
        out.append(
            param(
                name, annotation, default, help, f.metadata.get("panel"), flags, metavar, argument
            )
        )
        typing.get_args(out[-1].annotation)[1].config_field = f  # whose help it is (tests)
    return sorted(out, key=_panel_rank)


def _list_metavar(annotation: Any) -> str:
    """``<int,..>``: a list flag's element kind, as its help shows it."""
    text = str(annotation)
    if "dict" in text:
        return "<file>"  # --config: a JSON file of entries
    kind = next((k for k in ("bool", "int", "float") if k in text), "text")
    return f"<{ {'float': 'num'}.get(kind, kind) },..>"


def _panel_rank(p: inspect.Parameter) -> int:
    panel = typing.get_args(p.annotation)[1].rich_help_panel
    return -1 if panel is None else PANELS.index(panel)


def sizes(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every size field's text (``300MB``, or a number in the field's unit)
    in its unit, as the config takes it."""
    found = {(f.metadata.get("cli") or f.name): f for f in fields(cls) if f.metadata.get("unit")}
    return {k: size_in(found[k], v) if k in found else v for k, v in values.items()}


def lists(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every list flag's text (``4,16,64``) as its list of typed values."""
    hints = typing.get_type_hints(cls)
    found = {(f.metadata.get("cli") or f.name): f for f in fields(cls) if _is_list(hints[f.name])}
    return {
        k: parse_list(found[k], hints[found[k].name], v) if k in found and isinstance(v, str) else v
        for k, v in values.items()
    }


def _is_list(annotation: Any) -> bool:
    return (
        typing.get_origin(annotation) is list
        or list in typing.get_args(annotation)
        or any(typing.get_origin(a) is list for a in typing.get_args(annotation))
    )


def build(values: dict[str, Any], *classes: type) -> tuple[Any, ...]:
    """One config per class from a command's flag values (each takes its own fields; list
    flags split at commas, size flags converted): ``cfg, dask = build(v, Extract, Dask)``."""
    out = []
    for cls in classes:
        own = {(f.metadata.get("cli") or f.name): f for f in fields(cls)}
        mine = lists(cls, sizes(cls, {k: v for k, v in values.items() if k in own}))
        out.append(cls(**{own[k].name: v for k, v in mine.items()}))
    return tuple(out)


def output_params(
    json_help: str, *, storage: bool = True, quiet: bool = True
) -> list[inspect.Parameter]:
    """The options a command adds to its config's: storage options, --json, -q."""
    out = []
    if storage:
        out.append(param(
            "storage_options",
            str | None,
            None,
            "fsspec options for a store URL as JSON (default: $LOSA_CACHE_STORAGE_OPTIONS).",
            "Data",
        ))  # fmt: skip
    out.append(param("json_out", bool, False, json_help, "Output", ("--json",)))
    if quiet:
        out.append(param(
            "quiet",
            bool,
            False,
            "No progress on stderr (bars, notes, evaluation lines).",
            "Output",
            ("--quiet", "-q"),
        ))  # fmt: skip
    return out


def command(
    body: Callable[..., None], params: list[inspect.Parameter], doc: str
) -> Callable[..., None]:
    """``body`` with the generated signature typer reads."""

    def run(**kwargs: Any) -> None:
        body(**plain(kwargs))

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__, run.__name__ = reflow(doc), body.__name__.lstrip("_")
    return run


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Enum members -> their values."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}


def reflow(doc: str) -> str:
    """Each paragraph of ``doc`` as one line: rich wraps it to the terminal instead of
    keeping the source's line breaks (ragged at 80 columns)."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)
