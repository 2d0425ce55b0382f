"""Range checks for numeric config fields, in the configs' ``__post_init__``.

One place words the refusal, so every config names the field, its command-line option and
the bound the same way, and Python callers get the same checks as the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def flag(name: str) -> str:
    """The command-line option of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_at_least(config: object, bounds: Mapping[str, float]) -> None:
    """Refuse a field below its lower bound, or not a finite number; None means "not set"."""
    for name, low in bounds.items():
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} ({flag(name)}) must be a number, got {value!r}")
        if not math.isfinite(value) or value < low:
            raise ValueError(f"{name} ({flag(name)}) must be >= {low}, got {value!r}")


def check_positive(config: object, names: tuple[str, ...]) -> None:
    """Refuse a field that is not a finite number > 0 (fractions like a crop percentage)."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} ({flag(name)}) must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} ({flag(name)}) must be > 0, got {value!r}")
