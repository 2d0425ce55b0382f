"""Errors as one line on stderr: the top-level mapper every command runs under, and the
training commands' own.

:func:`top_level_errors` wraps every command (cli/main.py's :class:`MappedGroup`): an
``OSError`` (disk full, read-only or forbidden path, any other failed file operation) and a
damaged JSON/Zarr metadata file become one line naming the path and the fix, and a
non-zero exit; nothing finished is touched. Writers raise ``OSError`` with ``filename``
set, so the line names the file. ``LOSA_CACHE_DEBUG=1`` keeps the traceback instead.

Only errors whose message says what is wrong and how to fix it are one-line messages
(bad options, missing or damaged stores, a diverged run); any other exception is a bug
and keeps its traceback. CUDA running out of memory names the fixes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import typer

from losa_cache.oserrors import os_failure

__all__ = ["DEBUG_ENV", "OOM_FIX", "describe", "describe_os_error", "run_errors",
           "top_level_errors"]  # fmt: skip

OOM_FIX = (
    "CUDA ran out of memory: use a smaller --batch-size, --cache none (features "
    "streamed instead of held on the GPU), or for a sweep fewer configs per group "
    "(a smaller --memory-budget)"
)
#: Set to 1 to get the full traceback of an error the CLI would print as one line.
DEBUG_ENV = "LOSA_CACHE_DEBUG"
#: Exit status of an environment failure (disk, permissions); bad input exits 2.
OS_EXIT = 1


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


#: Options that name where a command writes: the fallback for an error without a filename.
PATH_OPTIONS = ("--out", "--store")


def describe_os_error(e: OSError, args: list[str] | None = None) -> str:
    """``e`` as one line: what happened, to which path (the error's filename, else the
    command's ``--out``/``--store`` in ``args``), and what to do."""
    from losa_cache.outdir import OutputWriteError

    if isinstance(e, OutputWriteError):  # the output writer's line names its file and fix
        return str(e)
    path = _paths(e) or _path_options(args or [])
    text = os_failure(e.errno, "--out/--store", "rerun the same command to resume")
    if text is None:
        text = f"{e.strerror or e} ({_name(e)})"
    return f"{path}: {text}" if path else text


def _name(e: OSError) -> str:
    return errno.errorcode.get(e.errno, "OSError") if e.errno is not None else type(e).__name__


def _path_options(args: list[str]) -> str:
    """``--out X`` (else ``--store X``) as given on the command line ("" when neither is):
    where a command writes."""
    given: dict[str, str] = {}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in PATH_OPTIONS:
            given[name] = value if eq else (args[i + 1] if i + 1 < len(args) else "")
    return next((f"{n} {given[n]}" for n in PATH_OPTIONS if n in given), "")


def _paths(e: OSError) -> str:
    names = [n for n in (e.filename, e.filename2) if n is not None]
    return " -> ".join(os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in names)


def describe(e: BaseException, args: list[str] | None = None) -> str:
    """A user error's one line; a damaged JSON file is named (json's message says only
    where in the text, not which file)."""
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
        return describe_os_error(e, args)
    if isinstance(e, json.JSONDecodeError):
        file = _file_of(e)
        where = f"{file} is not valid JSON" if file else "a JSON file is damaged"
        return (
            f"{where} ({e}): the file is damaged or was cut short; restore or delete it "
            f"(set {DEBUG_ENV}=1 to see where it was read)"
        )
    return str(e)


def _file_of(e: BaseException) -> str | None:
    """The file a parse error came from: the innermost frame of its traceback holding an
    open file or a path in a usual name (``json.load(fp)``, ``json.loads(path.read_text())``,
    zarr's ``store_path`` of the node whose ``zarr.json`` it parsed)."""
    found = None
    tb: TracebackType | None = e.__traceback__
    while tb is not None:
        for name in ("fp", "f", "file", "path", "filename", "p", "store_path"):
            text = _as_path(tb.tb_frame.f_locals.get(name))
            if text is not None:
                found = text
                break
        tb = tb.tb_next
    return found


def _as_path(value: Any) -> str | None:
    if type(value).__name__ == "StorePath":  # zarr: the node whose zarr.json it parsed
        return f"{str(value).removeprefix('file://')}/zarr.json"
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    name = getattr(value, "name", None)
    if hasattr(value, "read") and isinstance(name, str):
        return name
    if isinstance(value, str) and value.endswith((".json", ".jsonl")):
        return value
    return None


@contextlib.contextmanager
def top_level_errors(args: list[str] | None = None) -> Iterator[None]:
    """Every command runs under this: file-system and metadata failures as one line (the
    path and the fix) and a non-zero exit, unless ``LOSA_CACHE_DEBUG`` is set. ``args``:
    the command line, whose ``--out``/``--store`` name the place when the error does not."""
    if debugging():
        yield
        return
    try:
        yield
    except BrokenPipeError:  # stdout's reader went away (`... --help | head`): not an error
        raise typer.Exit(0) from None
    except OSError as e:
        typer.echo(f"error: {describe(e, args)}", err=True)
        raise typer.Exit(OS_EXIT if not isinstance(e, FileNotFoundError) else 2) from None
    except json.JSONDecodeError as e:
        typer.echo(f"error: {describe(e)}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def run_errors() -> Iterator[None]:
    """One clear line on stderr and exit code 2 for user errors; Ctrl-C exits 130."""
    import torch

    from losa_cache.outdir import OutdirInUse
    from losa_cache.store import StoreError
    from losa_cache.train import NonFiniteLossError

    user = (ValueError, FileNotFoundError, StoreError, NonFiniteLossError, OutdirInUse)
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("interrupted: checkpoints are kept; rerun with --resume to continue", err=True)
        raise typer.Exit(130) from None
    except torch.cuda.OutOfMemoryError:
        typer.echo(f"error: {OOM_FIX}", err=True)
        raise typer.Exit(2) from None
    except user as e:
        if debugging():
            raise
        typer.echo(f"error: {describe(e)}", err=True)
        raise typer.Exit(2) from None
