"""Shared CLI plumbing: clean errors, JSON or human output."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from losa_cache.cli.errors import debugging, describe
from losa_cache.text import human_bytes, human_seconds, table  # noqa: F401  (re-exported)

#: ``--json``: stdout holds one JSON document (progress still goes to stderr).
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print machine-readable JSON (progress still goes to stderr)."),
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
