"""Errors of the training commands: user errors in one line, internal ones with traceback.

Only errors whose message says what is wrong and how to fix it are one-line messages
(bad options, missing or damaged stores, a diverged run); any other exception is a bug
and keeps its traceback. CUDA running out of memory names the fixes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

__all__ = ["OOM_FIX", "run_errors"]

OOM_FIX = ("CUDA ran out of memory: use a smaller --batch-size, --cache none (features "
           "streamed instead of held on the GPU), or for a sweep fewer configs per group "
           "(a smaller --memory-budget)")


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
        typer.echo("interrupted: checkpoints are kept; rerun with --resume to continue",
                   err=True)
        raise typer.Exit(130) from None
    except torch.cuda.OutOfMemoryError:
        typer.echo(f"error: {OOM_FIX}", err=True)
        raise typer.Exit(2) from None
    except user as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

