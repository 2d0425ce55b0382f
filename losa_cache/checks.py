"""Range checks for numeric options, in the configs' ``__post_init__`` (and plain arguments).

One place words the refusal, so every check names the field, its command-line option and
the bound the same way, and Python callers get the same checks as the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def flag(name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def require_at_least(name: str, value: float | None, low: float) -> None:
    """Refuse ``value`` below ``low`` or not a finite number; None means "not set"."""
    if value is None:
        return
    _require_number(name, value)
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} ({flag(name)}) must be >= {low}, got {value!r}")


def require_positive(name: str, value: float | None) -> None:
    """Refuse ``value`` that is not a finite number > 0 (fractions like a crop percentage)."""
    if value is None:
        return
    _require_number(name, value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} ({flag(name)}) must be > 0, got {value!r}")


def check_at_least(config: object, bounds: Mapping[str, float]) -> None:
    """:func:`require_at_least` for each named field of ``config``."""
    for name, low in bounds.items():
        require_at_least(name, getattr(config, name), low)


def _require_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} ({flag(name)}) must be a number, got {value!r}")
