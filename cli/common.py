"""Shared CLI plumbing: clean errors, JSON or human output."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from losa_cache.cli.errors import debugging, describe

#: ``--json``: stdout holds one JSON document (progress still goes to stderr).
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print machine-readable JSON (progress still goes to stderr)."),
]
#: ``--quiet``: no progress bars, notes or evaluation lines on stderr.
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress on stderr (bars, notes, evaluation lines)."),
]

#: Library errors whose message already says what is wrong and how to fix it.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into one clear line on stderr and exit code 2 (no traceback);
    warnings print as one ``warning: ...`` line (not Python's file:line + source dump)."""
    try:
        with _one_line_warnings():
            yield
    except KeyboardInterrupt:
        typer.echo("interrupted: finished shards/checkpoints are kept; rerun to resume", err=True)
        raise typer.Exit(130) from None
    except USER_ERRORS as e:
        if debugging():
            raise
        typer.echo(f"error: {describe(e)}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Only the format changes: where warnings go (stderr, or a test's recorder) stays."""
    old = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = old


def _format_warning(message: Warning | str, *_args: Any, **_kwargs: Any) -> str:
    return f"warning: {message}\n"


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
