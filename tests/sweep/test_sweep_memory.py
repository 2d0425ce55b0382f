"""``sweep --max-memory``: the budget reaches every run's config and the store readers that
feed the sweep (the read-ahead it chose is the one the budget allows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from losa_cache.sweep import SweepConfig, expand_runs, run_sweep
from losa_cache.train import reader

MiB = 1 << 20


def test_the_sweep_budget_bounds_its_readers(
    make_sweep: Callable[..., SweepConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[dict[str, Any]] = []

    def spy(*args: Any) -> dict[str, int]:
        chosen.append(real(*args))
        return chosen[-1]

    real = reader.reader_memory
    monkeypatch.setattr(reader, "reader_memory", spy)
    cfg = make_sweep(cache="none", max_memory=1, method=["linear"], layers=["all"])
    assert all(r.train.max_memory == 1 for r in expand_runs(cfg, 4, [0, 1, 2, 3], "full"))
    run_sweep(cfg, progress=False)
    assert chosen and all(m["max_memory"] == MiB and m["bytes_held"] <= MiB for m in chosen)
