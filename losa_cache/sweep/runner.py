"""``run_sweep``: expand, profile, group, train every group in one pass, score, report.

    summary = run_sweep(SweepConfig(store="stores/demo.zarr", ranks=[4, 16, 64],
                                    layers=["evenly:1", "all"], lrs=[0.01, 0.05],
                                    epochs=10, out="runs/sweep"))

The sweep folder::

    sweep.json              config, runs (each a TrainConfig), profiles, groups
    checkpoint.pt           the group in progress (every run's state + stream positions)
    groups/<g>.json         a finished group: bytes read, seconds, batching chosen
    runs/<task>/<run>/      result.json + adapter of every trained run
    results.csv / .json     one row per (config, task) + the summary
    best/<task>/            the best run of each task on val, as an adapter

Ctrl-C checkpoints at the end of the current tick; ``resume`` continues the sweep
exactly (finished groups are kept, the group in progress continues from its checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from losa_cache.outdir import locked_outdir
from losa_cache.store import open_store
from losa_cache.sweep.config import RunSpec, SweepConfig, expand_runs
from losa_cache.sweep.data import FeatureCache, TaskData
from losa_cache.sweep.grouping import (
    Group,
    Profile,
    default_budget,
    make_groups,
    profile_key,
    profiles,
)
from losa_cache.sweep.measure import train_speed
from losa_cache.sweep.members import use_amp
from losa_cache.sweep.passes import GroupPass, SweepContext
from losa_cache.sweep.results import RESULT, best_runs, export_best, run_row, write_results
from losa_cache.train import checkpoint as ckpt
from losa_cache.train.cache import choose_cache
from losa_cache.train.reader import TORCH_DTYPES
from losa_cache.train.sources import StoreSource, build_side_config, pick_device, resolve_splits

__all__ = ["SWEEP_JSON", "run_sweep"]

SWEEP_JSON = "sweep.json"


def run_sweep(cfg: SweepConfig, progress: bool = True,
              storage_options: dict | None = None) -> dict[str, Any]:
    """Train every run of ``cfg`` (resuming if asked); returns the summary (also on disk)."""
    with locked_outdir(cfg.out, "sweep"):  # one sweep per --out at a time
        return _run_sweep(cfg, progress, storage_options)


def _run_sweep(cfg: SweepConfig, progress: bool, storage_options: dict | None) -> dict[str, Any]:
    out = Path(cfg.out)
    store = open_store(cfg.store, storage_options)
    store.require_complete()
    runs = expand_runs(cfg, store.depth, store.layers, store.default_task)
    saved = _resume_doc(cfg, out, runs)
    device = pick_device(cfg.device)
    tasks, infos = _tasks(store, runs, storage_options)
    sides = {r.key: build_side_config(r.train, infos[r.task]) for r in runs}
    dtype = TORCH_DTYPES[store.dtype]
    profs = _profiles(saved, runs, sides, dtype, device, store.fingerprint.get("model", ""))
    choice, cache_rows, layers = _cache_choice(cfg, store, runs, sides, tasks, device)
    groups = _groups(cfg, saved, runs, sides, tasks, profs, device, choice)
    out.mkdir(parents=True, exist_ok=True)
    if saved is None:
        _write_doc(out, cfg, runs, profs, groups)
    notes = [f"cache: {choice.reason}", f"{len(runs)} runs in {len(groups)} group(s)"]
    _say(progress, notes)
    cache = None
    todo = [g for g in range(len(groups)) if not _group_file(out, g).is_file()]
    if choice.mode != "none" and todo:
        cache = FeatureCache(store, cache_rows, layers, device if choice.mode == "gpu"
                             else torch.device("cpu"), cfg.workers, progress)
    with _sigint_flag() as interrupted:
        ctx = SweepContext(cfg, store, tasks, sides, device, cache, out, progress, interrupted,
                           notes=notes)
        by_key = {r.key: r for r in runs}
        for gid, group in enumerate(groups):
            if not _train_group(ctx, gid, len(groups), [by_key[k] for k in group.runs], profs):
                if interrupted():
                    raise KeyboardInterrupt
                return {"complete": False, "out": str(out), "group": gid, "notes": notes}
    rows = _with_speed(cfg, runs, sides, profs, dtype, device, progress)
    return _finish(cfg, out, rows, groups, choice, cache, notes)


# ---------------------------------------------------------------------------- set-up


def _resume_doc(cfg: SweepConfig, out: Path, runs: list[RunSpec]) -> dict[str, Any] | None:
    doc_path = out / SWEEP_JSON
    if not cfg.resume:
        if doc_path.exists():
            raise ValueError(f"{out} already holds a sweep ({SWEEP_JSON}); pass --resume to "
                             "continue it, or choose another --out")
        return None
    if not doc_path.is_file():
        raise FileNotFoundError(f"--resume: no {SWEEP_JSON} in {out}; run without --resume to "
                                "start, or point --out at the sweep to continue")
    doc = json.loads(doc_path.read_text())
    mine = [r.to_dict() for r in runs]
    theirs = doc["runs"]
    if [_maths(r) for r in mine] != [_maths(r) for r in theirs]:
        old = {r["task"] + "/" + r["id"] for r in theirs}
        new = {r["task"] + "/" + r["id"] for r in mine}
        raise ValueError(f"--resume: the runs differ from the sweep in {out} (only there: "
                         f"{sorted(old - new)[:5]}, only now: {sorted(new - old)[:5]}, or "
                         "settings changed); use the same options")
    return doc


def _maths(run: dict[str, Any]) -> dict[str, Any]:
    from losa_cache.train import TrainConfig

    return {"id": run["id"], "task": run["task"],
            **TrainConfig.from_dict(run["train"]).maths()}


def _tasks(store: Any, runs: list[RunSpec], storage_options: dict | None
           ) -> tuple[dict[str, TaskData], dict[str, Any]]:
    tasks, infos = {}, {}
    for r in runs:
        if r.task not in tasks:
            source = StoreSource(r.train, storage_options)  # StoreError listing the tasks
            infos[r.task] = source.info
            splits = resolve_splits(r.train, source.info.splits)
            tasks[r.task] = TaskData.load(store, r.task, splits)
            if not len(tasks[r.task].rows["train"]):
                raise ValueError(f"task {r.task!r} labels no rows of split {splits['train']!r}")
    return tasks, infos


def _profiles(saved: dict | None, runs: list[RunSpec], sides: dict, dtype: torch.dtype,
              device: torch.device, model: str) -> dict[str, Profile]:
    keys = {}
    for r in runs:
        amp = use_amp(r.train.amp, device)
        keys[profile_key(sides[r.key], r.train.optimizer, amp)] = (sides[r.key],
                                                                   r.train.optimizer, amp)
    if saved is not None and set(saved.get("profiles", {})) == set(keys):
        return {k: Profile(**v) for k, v in saved["profiles"].items()}
    return profiles(keys, dtype, device, model)


def _profile_of(r: RunSpec, sides: dict, profs: dict[str, Profile],
                device: torch.device) -> Profile:
    return profs[profile_key(sides[r.key], r.train.optimizer, use_amp(r.train.amp, device))]


def _cache_choice(cfg: SweepConfig, store: Any, runs: list[RunSpec], sides: dict,
                  tasks: dict[str, TaskData], device: torch.device) -> tuple[Any, Any, list]:
    """Hold the union of train + val rows of the union of blocks in memory, if it fits."""
    from losa_cache.side import create_side

    layers = sorted({i for r in runs for i in create_side(sides[r.key]).required_layers})
    rows = np.unique(np.concatenate([t.rows[role] for t in tasks.values()
                                     for role in ("train", "val")]))
    need = len(rows) * store.layout.row_bytes * len(layers)
    return choose_cache(cfg.cache, need, device), rows, layers


def _groups(cfg: SweepConfig, saved: dict | None, runs: list[RunSpec], sides: dict,
            tasks: dict[str, TaskData], profs: dict[str, Profile], device: torch.device,
            choice: Any) -> list[Group]:
    if saved is not None:
        return [Group.from_dict(g) for g in saved["groups"]]
    estimates = {}
    for r in runs:
        batch = int(r.train.plan(len(tasks[r.task].rows["train"]))["batch_size"])
        estimates[r.key] = _profile_of(r, sides, profs, device).memory_at(batch)
    here = choice.bytes if (choice.mode == "gpu") == (device.type == "cuda") else 0
    budget = cfg.memory_budget if cfg.memory_budget is not None else default_budget(device,
                                                                                   here)
    return make_groups(estimates, budget)


def _write_doc(out: Path, cfg: SweepConfig, runs: list[RunSpec], profs: dict[str, Profile],
               groups: list[Group]) -> None:
    doc = {"config": cfg.to_dict(), "runs": [r.to_dict() for r in runs],
           "profiles": {k: p.to_dict() for k, p in profs.items()},
           "groups": [g.to_dict() for g in groups]}
    (out / SWEEP_JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- groups


def _group_file(out: Path, gid: int) -> Path:
    return out / "groups" / f"{gid}.json"


def _train_group(ctx: SweepContext, gid: int, n: int, runs: list[RunSpec],
                 profs: dict[str, Profile]) -> bool:
    """Train, score and save one group; False if stopped before the end."""
    if _group_file(ctx.out, gid).is_file():
        return True
    state = None
    if (ctx.out / ckpt.CHECKPOINT).is_file():
        state = ckpt.load_checkpoint(ctx.out)
        state = state if state.get("group") == gid else None
    gp = GroupPass(ctx, gid, runs, state)
    try:
        if not gp.train(f"group {gid + 1}/{n}"):
            return False
        evals = {"val": gp.evaluate("val"), "test": gp.evaluate("test")}
        cache_bytes = ctx.cache.bytes_read if ctx.cache is not None else 0
        for m in gp.members:
            row = run_row(m.spec, m.side, m, gid, gp.order_kind[m.spec.key],
                          _profile_of(m.spec, ctx.sides, profs, ctx.device),
                          {role: evals[role].get(m.spec.key) for role in evals},
                          gp.bytes_read + cache_bytes)
            _save_run(ctx, m, row)
        stats = {"group": gid, "num_runs": len(runs), "bytes_read": gp.bytes_read,
                 "seconds": gp.seconds, "ticks": gp.tick,
                 "batching": [{"runs": [m.spec.key for m in g.members], "mode": g.mode,
                               "timing_s": g.timing} for _, _, gs in gp.consumers for g in gs],
                 "order": gp.order_kind}
        _group_file(ctx.out, gid).parent.mkdir(exist_ok=True)
        _group_file(ctx.out, gid).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
        (ctx.out / ckpt.CHECKPOINT).unlink(missing_ok=True)
        return True
    finally:
        gp.close()


def _save_run(ctx: SweepContext, m: Any, row: dict[str, Any]) -> None:
    from losa_cache.adapter import save_adapter

    run_dir = Path(m.spec.train.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if m.status == "trained":
        task = ctx.tasks[m.spec.task]
        meta = {"fingerprint": ctx.store.fingerprint, "classes": task.classes,
                "task": task.task, "train_config": m.spec.train.to_dict(), "metrics": row}
        save_adapter(run_dir, m.model.cpu(), m.side, meta)
    (run_dir / RESULT).write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- the end


def _with_speed(cfg: SweepConfig, runs: list[RunSpec], sides: dict, profs: dict, dtype: Any,
                device: torch.device, progress: bool) -> list[dict[str, Any]]:
    """Every run's row, training img/s measured once per (network, optimizer, batch)."""
    rows = [json.loads((Path(r.train.out) / RESULT).read_text()) for r in runs]
    speeds: dict[str, float | None] = {}
    todo = [(r, row) for r, row in zip(runs, rows, strict=True)
            if row["train_img_s"] is None and cfg.speed_batches]
    for r, row in tqdm(todo, desc="speed", unit="run", disable=not progress or not todo):
        amp = use_amp(r.train.amp, device)
        key = f"{profile_key(sides[r.key], r.train.optimizer, amp)}|{row['batch_size']}"
        if key not in speeds:
            speeds[key] = train_speed(sides[r.key], r.train.optimizer, row["batch_size"],
                                      cfg.speed_batches, dtype, device, amp)
        row["train_img_s"] = speeds[key]
        (Path(r.train.out) / RESULT).write_text(json.dumps(row, indent=2, sort_keys=True) + "\n")
    return rows


def _finish(cfg: SweepConfig, out: Path, rows: list[dict[str, Any]], groups: list[Group],
            choice: Any, cache: FeatureCache | None, notes: list[str]) -> dict[str, Any]:
    best = best_runs(rows)
    for r in rows:
        r["best"] = best.get(r["task"]) is r
    paths = export_best(out, best)
    stats = [json.loads(_group_file(out, g).read_text()) for g in range(len(groups))]
    seconds = sum(s["seconds"] for s in stats)
    images = sum(r["train_images"] for r in rows)
    summary = {
        "complete": True, "out": str(out), "store": cfg.store, "runs": len(rows),
        "tasks": sorted({r["task"] for r in rows}), "cache": choice.to_dict(),
        "mode": "memory" if cache is not None else "streaming",
        "groups": [{**g.to_dict(), **s} for g, s in zip(groups, stats, strict=True)],
        "bytes_read": sum(s["bytes_read"] for s in stats) + (cache.bytes_read if cache else 0),
        "train_seconds": seconds, "config_images": images,
        "config_images_per_s": images / seconds if seconds else None,
        "best": {t: {"run": r["run"], "val_acc": r["val_acc"], "test_acc": r["test_acc"],
                     "adapter": paths[t]} for t, r in best.items()},
        "notes": notes,
    }
    write_results(out, rows, summary)
    return {"summary": summary, "results": rows}


@contextlib.contextmanager
def _sigint_flag() -> Iterator[Any]:
    """First Ctrl-C: stop (with a checkpoint) at the end of the tick; second: at once."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: flag[0]
        return

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True
        tqdm.write("interrupt: checkpointing after this tick (Ctrl-C again to abort now)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag[0]
    finally:
        signal.signal(signal.SIGINT, old)


def _say(progress: bool, lines: list[str]) -> None:
    if progress:
        for line in lines:
            tqdm.write(line)
