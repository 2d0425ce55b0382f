"""Range checks for numeric options: the one place that words a refusal and knows the bounds
every option shares.

Configs declare ranges in their field metadata (:mod:`losa_cache.fields`) or call these
helpers in ``__post_init__``; both end in :func:`range_error`, so every check names the
option and the bound the same way, and Python callers get the same checks as the CLI.
Besides the declared bounds, every integer must fit in 64 bits (seeds, sizes and counts
are stored and handed to torch/numpy as int64: a larger one is an OverflowError deep
inside) and every float must be finite. Upper bounds that follow from the machine
(:func:`max_workers`) or from sizes no run can hold (:data:`MAX_BATCH`) live here too;
those that follow from the model are checked where it is known (the side networks'
``check_config``, with the backbone's width and token count).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping

__all__ = [
    "BATCH_LIMIT",
    "DEFAULT_MAX_PIXELS",
    "INT64_MAX",
    "MAX_BATCH",
    "check_ranges",
    "cpu_cores",
    "flag",
    "max_workers",
    "parse_size",
    "range_error",
    "require_at_least",
    "require_choice",
    "require_positive",
    "require_range",
]

#: Largest integer any option takes: int64, what torch seeds, numpy and the stores hold.
INT64_MAX = 2**63 - 1
#: Largest batch (images or rows per step), and why: beyond it a step only exhausts memory.
MAX_BATCH = 2**16
BATCH_LIMIT = (MAX_BATCH, "a larger batch only exhausts memory; speed saturates long before")
#: Largest image decoded (width x height): PIL's own bomb guard, ~9459 x 9459 px, 268 MB as RGB.
DEFAULT_MAX_PIXELS = 89_478_485
#: Worker processes or I/O threads per CPU core (and at least :data:`MIN_WORKER_CAP`).
WORKERS_PER_CORE = 4
MIN_WORKER_CAP = 16

#: An upper bound: a number, (number, why), or a function giving (bound, why) when asked
#: (machine sizes, known only where the check runs).
Bound = float | tuple[float, str] | Callable[[], tuple[float, str]]


def flag(name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as taskset/cgroups set it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def max_workers() -> tuple[int, str]:
    """The most worker processes/threads an option may ask for here, and why."""
    cores = cpu_cores()
    cap = max(MIN_WORKER_CAP, WORKERS_PER_CORE * cores)
    return cap, (
        f"{WORKERS_PER_CORE} per CPU core, {MIN_WORKER_CAP} at least; this machine has "
        f"{cores}: more only contend, and each holds memory of its own"
    )


def range_error(
    label: str,
    value: object,
    *,
    integer: bool = False,
    low: float | None = None,
    above: float | None = None,
    below: float | None = None,
    high: Bound | None = None,
    kind: bool = True,
) -> str | None:
    """The one-line refusal of ``value`` for option ``label``, or None when it is in range.

    ``low <= value``, ``value > above``, ``value < below``, ``value <= high`` (``high`` may
    be a function giving (bound, why)); integers also fit in 64 bits, floats are finite.
    ``kind`` says "an integer"/"a number" in the message.
    """
    why = ""
    if callable(high):
        high, why = high()
    elif isinstance(high, tuple):
        high, why = high
    if integer and (high is None or high > INT64_MAX):
        high, why = INT64_MAX, "it must fit in 64 bits"
    number = _is_number(value, integer)
    low_rules = [(f">= {_num(low)}", low, lambda v: v >= low),
                 (f"> {_num(above)}", above, lambda v: v > above),
                 (f"< {_num(below)}", below, lambda v: v < below)]  # fmt: skip
    low_ok = all(number and test(value) for _, bound, test in low_rules if bound is not None)
    high_ok = high is None or (number and value <= high)  # type: ignore[operator]
    if number and low_ok and high_ok:
        return None
    typed = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    what = ("an integer" if integer else "a number") if kind or not typed else ""
    wanted = [text for text, bound, _ in low_rules if bound is not None]
    reason = ""
    if number and not high_ok:  # the upper bound is named only when it is the one broken
        wanted.append(f"<= {_num(high)}")
        reason = f" ({why})" if why else ""
    text = " ".join(t for t in (what, " and ".join(wanted)) if t)
    return f"{label} must be {text}{reason}, got {value!r}"


def _is_number(value: object, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value: float | None) -> str:
    """Bounds as written: 65536, 9223372036854775807, 1.0."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def require_range(
    name: str,
    value: float | None,
    low: float | None = None,
    high: Bound | None = None,
    *,
    above: float | None = None,
    integer: bool | None = None,
    kind: bool = False,
) -> None:
    """Refuse ``value`` (None means "not set") outside ``low..high`` (or ``> above``),
    naming the field and its option: ``batch_size (--batch-size) must be >= 1, got 0``
    (``kind``: "must be an integer >= 1")."""
    if value is None:
        return
    if integer is None:
        integer = isinstance(value, int) and not isinstance(value, bool)
    error = range_error(f"{name} ({flag(name)})", value, integer=integer, low=low,
                        above=above, high=high, kind=kind)  # fmt: skip
    if error is not None:
        raise ValueError(error)


def require_at_least(name: str, value: float | None, low: float) -> None:
    """Refuse ``value`` below ``low`` or not a finite number; None means "not set"."""
    require_range(name, value, low)


def require_positive(name: str, value: float | None, high: Bound | None = None) -> None:
    """Refuse ``value`` that is not a finite number > 0 (and <= ``high`` where given)."""
    require_range(name, value, above=0, high=high, integer=False)


def require_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    """Refuse a spelling not among ``choices`` (None means "not set"), listing them."""
    if value is not None and value not in choices:
        raise ValueError(f"unknown {name} {value!r} ({flag(name)}); choose one of {list(choices)}")


def check_ranges(config: object, bounds: Mapping[str, tuple[float | None, Bound | None]]) -> None:
    """:func:`require_range` for each named field of ``config``: name -> (low, high)."""
    for name, (low, high) in bounds.items():
        require_range(name, getattr(config, name), low, high)


_SIZE_UNITS = "kmgtp"
_SIZE = re.compile(r"\s*((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([kmgtp]?)(i?)(b?)\s*", re.I)


def parse_size(text: str | int, plain: int = 1) -> int:
    """Bytes of a size such as ``500GB``, ``1.5TB``, ``800 MiB``, ``1e9``: the one parser of
    every option that takes bytes (``plan --budget``, ``sweep --memory-budget``,
    ``--max-memory``). KB/MB/GB/TB/PB (and K/M/G/T/P) are powers of 1000, as disks are
    sold; KiB/MiB/GiB/TiB/PiB powers of 1024; case does not matter. A number without a
    unit counts ``plain`` bytes (1; ``--max-memory``'s MiB: 2**20). Positive, int64."""
    m = None if isinstance(text, bool) else _SIZE.fullmatch(str(text))
    if m is None or (m.group(3) and not m.group(2)):
        raise ValueError(
            f"cannot read the size {text!r}: write a number and a unit, e.g. 500GB, 1.5TB, "
            "800MiB (KB/MB/GB/TB = powers of 1000, KiB/MiB/GiB/TiB = powers of 1024)"
        )
    prefix, binary = m.group(2).lower(), m.group(3)
    power = _SIZE_UNITS.index(prefix) + 1 if prefix else 0
    scale = (1024 if binary else 1000) ** power if prefix or m.group(4) else plain
    value = float(m.group(1)) * scale
    if not value < 2**63:  # inf too: 1e400
        raise ValueError(f"size {text!r} is too large (at most 2**63 - 1 bytes)")
    if int(value) <= 0:
        raise ValueError(f"the size {text!r} is not positive; give a size such as 500GB")
    return int(value)
