"""Sweeps: many side networks trained from one pass over a feature store.

    from losa_cache.sweep import SweepConfig, run_sweep
    out = run_sweep(SweepConfig(store="stores/demo.zarr", method=["losa", "linear"],
                                rank=[4, 16], layers=["evenly:1", "all"], lr=[0.01, 0.05],
                                epochs=5, out="runs/sweep"))

Modules: ``config`` (SweepConfig, grid expansion into TrainConfigs), ``grouping`` (memory
profiles and groups), ``measure`` (the paper's efficiency metrics), ``runner``
(``run_sweep``: the training engine of :mod:`losa_cache.train` over each group),
``results`` (results.csv/json, best adapters), ``report`` (Pareto plots and report.md).
"""

from __future__ import annotations

from losa_cache._callable import make_callable
from losa_cache.sweep.config import RunSpec, SweepConfig, expand_runs, load_entries
from losa_cache.sweep.results import load_results
from losa_cache.sweep.runner import run_sweep

__all__ = ["RunSpec", "SweepConfig", "expand_runs", "load_entries", "load_results", "run_sweep"]


make_callable(__name__)  # losa_cache.sweep(...): losa_cache/api.py
