"""Progress on stderr: bars, notes and per-evaluation lines, so stdout holds results alone.

Every command that reports while it works goes through here (train, sweep, extract...),
so ``--json`` keeps stdout one JSON document while stderr still shows progress, and
``--quiet`` (``enabled=False``) silences all of it. ``sys.stderr`` is looked up at each
call, so a caller that swaps it (a test's runner) gets the output.

    bar = progress_bar(total, "train", "step", enabled)
    note("cache: ram ...", enabled)
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["eval_line", "note", "pct", "progress_bar"]


def progress_bar(
    total: int | None, desc: str, unit: str, enabled: bool = True, initial: int = 0, **kw: Any
) -> tqdm:
    """A tqdm bar on stderr (rate and ETA; callers add a postfix), off when not enabled.
    Away from a terminal it redraws every few seconds, so a log file stays short."""
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.1 if tty else 5.0,
        **kw,
    )


def note(text: str, enabled: bool = True) -> None:
    """One line on stderr, printed above any bar that is drawing."""
    if enabled:
        tqdm.write(text, file=sys.stderr)


def pct(value: float | None) -> str:
    """An accuracy fraction as the tables print it: ``71.25%`` (``-`` for none)."""
    return "-" if value is None else f"{100 * value:.2f}%"


def eval_line(
    name: str, step: int, steps: int, acc: float, loss: float, best: dict[str, Any] | None
) -> str:
    """The line each validation prints: step, val accuracy and loss, best so far."""
    where = f"{name}: " if name else ""
    best_text = "" if best is None else f" (best {pct(best['acc'])} at step {best['step']})"
    return f"{where}step {step}/{steps}  val acc {pct(acc)}  val loss {loss:.4f}{best_text}"
