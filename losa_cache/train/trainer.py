"""``train``: the engine over one run, from a feature store or live.

    result = train(TrainConfig(store="stores/demo.zarr", method="losa", rank=16,
                               steps=500, out="runs/losa"))

A sweep (:mod:`losa_cache.sweep`) builds its runs with the same :func:`make_run` and
trains them with the same engine, so a config trained alone equals the same config
inside a sweep, bit for bit. Everything a step depends on is in the run's checkpoint,
so ``resume`` continues bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losa_cache.baselines.methods import build_baseline
from losa_cache.methods import get_method
from losa_cache.outdir import claim_outdir, fresh_folder, locked_outdir
from losa_cache.progress import note
from losa_cache.store import StoreError
from losa_cache.train import checkpoint as ckpt
from losa_cache.train.allocator import tune_allocator
from losa_cache.train.cache import choose_cache
from losa_cache.train.choose import K_DIR, candidate_configs, keep_best
from losa_cache.train.config import TrainConfig
from losa_cache.train.engine import Engine, Inputs
from losa_cache.train.keys import Key, sort_keys
from losa_cache.train.run import RUN_FILES, NonFiniteLossError, Run
from losa_cache.train.sources import (
    DataSource,
    StoreSource,
    build_side_config,
    no_val_note,
    pick_device,
    resolve_splits,
)

__all__ = ["choose_inputs", "make_run", "open_source", "train", "with_out"]


def open_source(cfg: Any, device: torch.device, storage_options: dict | None = None) -> DataSource:
    """The store (fsspec options for URLs kept out of the saved config), or live mode."""
    if cfg.live:
        from losa_cache.train.live import LiveSource

        return LiveSource(cfg, device)
    if not cfg.store:
        raise ValueError("give --store (a feature store), or --live with --model/--dataset")
    return StoreSource(cfg.store, storage_options)


def make_run(cfg: TrainConfig, source: DataSource, device: torch.device, name: str = "") -> Run:
    """A run of ``cfg`` on ``source``: its task, splits, rows and side network."""
    info = source.info
    task = source.task(cfg.task)
    splits = resolve_splits(cfg, info.splits)
    split_rows = source.split_rows(str(splits["train"]))
    rows = {
        role: task.labelled(source.split_rows(split)) if split else np.zeros(0, np.int64)
        for role, split in splits.items()
    }
    if len(rows["train"]) == 0:
        raise StoreError(
            f"split {splits['train']!r} has no labelled, valid rows for task {task.task!r}"
        )
    for role in ("val", "test"):
        if splits[role] is not None and not len(rows[role]):
            splits[role] = None  # nothing to score on
    side = build_side_config(cfg, info, len(task.classes))
    model = None
    if get_method(cfg.method).live:  # its own trainable copy of the live source's backbone
        model = build_baseline(cfg.method, source.backbone.model, side, cfg, cfg.seed)
    run = Run(cfg, side, info, task, splits, split_rows, rows, device, name, model)
    if splits["val"] is None and cfg.val_split != "none":  # said once: the notes of one run
        run.notes.append(
            no_val_note(info.splits, "nothing will be validated and the adapter is the last step's")
        )
    if run.batch < cfg.batch_size:
        run.notes.append(
            f"batch size {cfg.batch_size} capped at the {len(rows['train'])} training rows"
        )
    return run


def cache_need(source: DataSource, rows: list[np.ndarray], layers: set[Key]) -> int | None:
    """Bytes ``--cache`` would hold: the given rows of the given feed keys, at the size the
    feed holds them (int8: codes and scales); None for a live source (nothing to hold)."""
    if not isinstance(source, StoreSource):
        return None
    return len(np.unique(np.concatenate(rows))) * source.info.feed_bytes(sort_keys(layers))


def choose_inputs(
    mode: str,
    source: DataSource,
    device: torch.device,
    rows: list[np.ndarray],
    layers: set[Key],
    workers: int,
    progress: bool,
    max_memory_mib: int | None = None,
) -> Inputs:
    """``--cache``: hold the given rows of the given feed keys (blocks, taps) in memory when
    they fit, at the size the feed holds them (int8: codes and scales)."""
    union, keys = np.unique(np.concatenate(rows)), sort_keys(layers)
    return Inputs(
        source,
        device,
        choose_cache(mode, cache_need(source, rows, layers), device),
        union,
        keys,
        workers,
        progress,
        None if max_memory_mib is None else max_memory_mib << 20,
    )


def train(
    cfg: TrainConfig, progress: bool = True, storage_options: dict | None = None
) -> dict[str, Any]:
    """Run (or resume) training; returns the final metrics (also in ``out/metrics.json``).

    ``storage_options`` (fsspec, for store URLs) stay out of every saved file: they may
    hold credentials.
    """
    cfg = with_out(cfg, "train", progress)
    with locked_outdir(cfg.out, "train"):  # one run per --out at a time
        claim_outdir(cfg.out, "train", proof=(ckpt.CHECKPOINT, K_DIR), known=RUN_FILES)
        return _train(cfg, progress, storage_options)


def _resuming(cfgs: list[TrainConfig]) -> list[TrainConfig]:
    """MIST's candidates under --resume: those with a checkpoint resume, the others start
    (a kill can come between the first checkpoints of two candidates)."""
    if len(cfgs) == 1 or not cfgs[0].resume:
        return cfgs
    held = [(Path(c.out) / ckpt.CHECKPOINT).is_file() for c in cfgs]
    if not any(held):
        ckpt.load_checkpoint(Path(cfgs[0].out))  # the one "no checkpoint" message
    return [dataclasses.replace(c, resume=h) for c, h in zip(cfgs, held, strict=True)]


def with_out(cfg: Any, kind: str, progress: bool) -> Any:
    """``cfg`` with its output folder: ``--out``, else a new ``runs/<kind>-<time>`` (said
    on stderr); ``--resume`` needs the folder named."""
    if cfg.out:
        return cfg
    if cfg.resume:
        raise ValueError(
            f"--resume needs --out: the {kind} folder to continue (e.g. runs/{kind}-<date>-<time>)"
        )
    out = fresh_folder(kind)
    note(f"writing into {out} (--out names another folder)", progress)
    return dataclasses.replace(cfg, out=out)


def _train(cfg: TrainConfig, progress: bool, storage_options: dict | None) -> dict[str, Any]:
    device = pick_device(cfg.device)
    allocator = (
        tune_allocator(budget=cfg.max_memory is not None)
        if device.type == "cpu" and not cfg.live
        else None
    )
    baseline = ckpt.reset_peak_memory(device)
    source = open_source(cfg, device, storage_options)
    try:
        # one run, or one per candidate setting chosen on val (MIST's k), fed together
        runs = [make_run(c, source, device) for c in _resuming(candidate_configs(cfg, source.info))]
        for run in runs:
            run.start()
        inputs = choose_inputs(cfg.cache, source, device,
                               [r for run in runs for r in (run.train_rows, run.eval_rows("val"))],
                               {k for run in runs for k in run.layers}, cfg.workers, progress,
                               cfg.max_memory)  # fmt: skip
        shared = [f"cache: {inputs.choice.reason}"]  # the feed is one for all candidates
        if allocator is not None:
            shared.append(f"allocator: {allocator['why']}")
        for run in runs:
            run.notes.extend(shared)
        for text in dict.fromkeys(t for run in runs for t in run.notes):  # each said once
            note(text, progress)
        Engine(runs, inputs, progress).train()
        extra = {
            "bytes_read": inputs.bytes_read,
            **ckpt.peak_memory(device, baseline),
            "allocator": allocator,
        }
        feed = {
            "cache": inputs.choice.to_dict(),
            "bytes_read": inputs.bytes_read,
            "reader_memory": inputs.memory,
        }
        results = [
            r.finish({**extra, "feed": {**feed, "buffer_rows": r.order.buffer_rows}}) for r in runs
        ]
    finally:
        source.close()
    if all(r.status == "diverged" for r in runs):
        raise NonFiniteLossError(_divergence(runs))
    metrics = results[0] if len(runs) == 1 else _candidates_end(cfg, results)
    if progress:
        _say_end(metrics)
    return metrics


def _divergence(runs: list[Run]) -> str:
    """Every candidate's own error (MIST's k candidates each diverge at their own step)."""
    if len(runs) == 1:
        return str(runs[0].error)
    return "; ".join(f"{r.out}: {r.error}" for r in runs)


def _candidates_end(cfg: TrainConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The best candidate kept once all ended; while any is stopped (--stop-at, Ctrl-C)
    nothing is chosen: the run is incomplete and --resume continues every candidate."""
    if all(m["status"] != "stopped" for m in results):
        return keep_best(cfg, results)
    runs = {str(m["options"]["gather_k"]): m["out"] for m in results}
    return {
        **results[0],
        "complete": False,
        "status": "stopped",
        "out": cfg.out,
        "candidate_runs": runs,
        "step": min(m["step"] for m in results),
    }


def _say_end(m: dict[str, Any]) -> None:
    for text in m["notes"]:
        if text.startswith("stopped"):
            note(text)
