"""``run_sweep``: expand -> profile -> group -> the training engine over each group.

    summary = run_sweep(SweepConfig(store="stores/demo.zarr", rank=[4, 16, 64],
                                    layers=["evenly:1", "all"], lr=[0.01, 0.05],
                                    epochs=10, out="runs/sweep"))

Every run is built and trained by the same code as ``train`` (:func:`make_run`, the
:class:`~losa_cache.train.engine.Engine`), so each writes what ``train`` writes into its
own folder, and equals that config trained alone. The sweep folder::

    sweep.json              config, runs (each a TrainConfig), profiles, groups
    groups/<g>.json         a finished group: bytes read, seconds, batching chosen
    runs/<task>/<run>/      each run's metrics.jsonl, metrics.json, checkpoint, adapter,
                            result.json (its row of the results)
    results.csv / .json     one row per (config, task) + the summary
    best/<task>/            the best run of each task on val, as an adapter

A run that diverges stops alone (its last good checkpoint kept, named in the summary);
the others go on. Ctrl-C checkpoints every run of the group at the end of the tick;
``resume`` continues the sweep exactly: finished runs are kept, the others continue
from their own checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losa_cache.baselines import build_baseline
from losa_cache.methods import get_method
from losa_cache.outdir import (
    OutdirError,
    atomic_write_text,
    claim_outdir,
    locked_outdir,
    read_json,
    safe_subdir,
)
from losa_cache.progress import note, progress_bar
from losa_cache.side import SideConfig
from losa_cache.sweep.config import RunSpec, SweepConfig, expand_runs, method_uses
from losa_cache.sweep.grouping import (
    Group,
    Profile,
    baseline_profile,
    default_budget,
    make_groups,
    profile_key,
    profiles,
)
from losa_cache.sweep.measure import (
    image_inputs,
    inference_memory,
    inference_speed,
    live_inputs,
    step_memory,
    step_speed,
    train_speed,
)
from losa_cache.sweep.results import RESULT, best_runs, export_best, run_row, write_results
from losa_cache.train import checkpoint as ckpt
from losa_cache.train.engine import Engine, Inputs
from losa_cache.train.keys import deepest_block, side_inputs
from losa_cache.train.run import use_amp
from losa_cache.train.sources import (
    DataSource,
    TaskData,
    build_side_config,
    no_val_note,
    pick_device,
    resolve_splits,
)
from losa_cache.train.trainer import cache_need, choose_inputs, make_run, open_source, with_out

__all__ = ["SWEEP_JSON", "run_sweep"]

SWEEP_JSON = "sweep.json"
#: What a sweep folder holds (an earlier version's folder with these is adopted).
SWEEP_FILES = frozenset(
    {SWEEP_JSON, "groups", "runs", "best", "report", "results.json", "results.csv"}
)


def run_sweep(
    cfg: SweepConfig, progress: bool = True, storage_options: dict | None = None
) -> dict[str, Any]:
    """Train every run of ``cfg`` (resuming if asked); returns the summary (also on disk)."""
    cfg = with_out(cfg, "sweep", progress)
    if cfg.cluster or cfg.scheduler:  # refused before anything starts or is written
        from losa_cache.sweep.cluster import for_cluster

        cfg = for_cluster(cfg)
    with locked_outdir(cfg.out, "sweep"):  # one sweep per --out at a time (members too)
        claim_outdir(cfg.out, "sweep", proof=(SWEEP_JSON,), known=SWEEP_FILES)
        return _run_sweep(cfg, progress, storage_options)


def _run_sweep(cfg: SweepConfig, progress: bool, storage_options: dict | None) -> dict[str, Any]:
    out = Path(cfg.out)
    device = pick_device(cfg.device)
    source = open_source(cfg, device, storage_options)
    try:
        with _cluster(cfg, storage_options, progress) as cluster:
            return _sweep(cfg, out, device, source, progress, cluster)
    finally:
        source.close()


def _cluster(cfg: SweepConfig, storage_options: dict | None, progress: bool) -> Any:
    """The sweep's Dask cluster (``--cluster``/``--scheduler``), or none: in-process."""
    if not (cfg.cluster or cfg.scheduler):
        return contextlib.nullcontext()
    from losa_cache.sweep.cluster import sweep_cluster

    return sweep_cluster(cfg, storage_options, progress)


def _sweep(
    cfg: SweepConfig,
    out: Path,
    device: torch.device,
    source: DataSource,
    progress: bool,
    cluster: Any = None,
) -> dict[str, Any]:
    """Plan (or reload) the sweep, train its groups here or on ``cluster``, gather."""
    info = source.info
    runs = expand_runs(cfg, info.depth, list(info.layers), info.default_task)
    saved = _resume_doc(cfg, out, runs)
    tasks = {r.task: source.task(r.task) for r in runs}  # StoreError listing the tasks
    rows = _task_rows(cfg, source, tasks)
    sides = {r.key: build_side_config(r.train, info, len(tasks[r.task].classes)) for r in runs}
    profs = _profiles(
        saved, runs, sides, info.dtype, device, str(info.fingerprint.get("model", "")), source
    )
    todo = [r for r in runs if not _finished(r)]
    inputs, choice, budget = None, None, cfg.memory_budget
    if todo and cluster is not None:  # each worker holds its own cache and models
        memory = cluster.memory(_cache_need(source, rows, todo, sides))
        choice, budget = memory.cache, memory.budget if budget is None else budget
    elif todo:
        inputs = _choose(cfg, source, device, rows, todo, sides, progress)
        choice = inputs.choice
    groups = _groups(cfg, saved, runs, sides, rows, profs, device, choice, budget)
    out.mkdir(parents=True, exist_ok=True)
    if saved is None:
        _write_doc(out, cfg, runs, sides, profs, groups, device)
    where = " (on the workers)" if cluster is not None else ""
    notes = [
        f"cache{where}: {choice.reason if choice else 'no run left to train'}",
        f"{len(runs)} runs in {len(groups)} group(s)",
    ]
    no_val = sorted(t for t in tasks if not len(rows[t]["val"]))
    if no_val:  # best_runs chooses on val alone
        notes.append(no_val_note(info.splits, f"no best run is named (tasks {no_val})"))
    _say(progress, notes)
    by_key = {r.key: r for r in runs}
    pending = [g for g in range(len(groups)) if not _group_file(out, g).is_file()]
    extra: dict[str, Any] = {}
    if cluster is not None:
        from losa_cache.sweep.cluster import GroupWork

        work = [
            GroupWork(
                g,
                groups[g].runs,
                *_group_size([by_key[k] for k in groups[g].runs], rows, sides, profs, device),
            )
            for g in pending
        ]
        stopped = cluster.train(work, train_group_alone) if work else None
        if stopped is not None:
            return {"complete": False, "out": str(out), "group": stopped, "notes": notes}
        pending = []  # every group trained there
        if cfg.costs:  # timed on a worker: the device the runs trained on
            cluster.call(costs_alone, "costs")
        extra = cluster.summary()
    by_run = {r.key: _profile_of(r, sides, profs, device) for r in runs}
    for gid in pending:
        assert inputs is not None
        done = _train_group(
            cfg,
            source,
            inputs,
            device,
            gid,
            len(groups),
            [by_key[k] for k in groups[gid].runs],
            sides,
            by_run,
            progress,
        )
        if not done:  # --stop-at (every run stops there) or a run stopped otherwise
            return {"complete": False, "out": str(out), "group": gid, "notes": notes}
    rows_out = _with_speed(cfg, runs, sides, info.dtype, device, progress, source)
    return _finish(cfg, out, rows_out, groups, choice, inputs, notes, extra)


# ---------------------------------------------------------------------------- set-up


def _resume_doc(cfg: SweepConfig, out: Path, runs: list[RunSpec]) -> dict[str, Any] | None:
    doc_path = out / SWEEP_JSON
    if not cfg.resume:
        if doc_path.exists():
            raise ValueError(
                f"{out} already holds a sweep ({SWEEP_JSON}); pass --resume to "
                "continue it, or choose another --out"
            )
        return None
    if not doc_path.is_file():
        raise FileNotFoundError(
            f"--resume: no {SWEEP_JSON} in {out}; run without --resume to "
            "start, or point --out at the sweep to continue"
        )
    doc = read_json(doc_path, _DAMAGED)
    theirs = doc.get("runs") if isinstance(doc, dict) else None
    if not isinstance(theirs, list) or not isinstance(doc.get("groups"), list):
        raise OutdirError(f"{doc_path} is not a sweep's record (no runs or groups); {_DAMAGED}")
    mine = [r.to_dict() for r in runs]
    if [_maths(r) for r in mine] != [_maths(r) for r in theirs]:
        old = {r["task"] + "/" + r["id"] for r in theirs}
        new = {r["task"] + "/" + r["id"] for r in mine}
        raise ValueError(
            f"--resume: the runs differ from the sweep in {out} (only there: "
            f"{sorted(old - new)[:5]}, only now: {sorted(new - old)[:5]}, or "
            "settings changed); use the same options"
        )
    return doc


_DAMAGED = (
    "restore it from a copy, or start the sweep again without --resume into a new "
    "--out (finished runs in runs/ can be copied over)"
)


def _maths(run: dict[str, Any]) -> dict[str, Any]:
    from losa_cache.train import TrainConfig

    return {"id": run["id"], "task": run["task"], **TrainConfig.from_dict(run["train"]).maths()}


def _task_rows(
    cfg: SweepConfig, source: DataSource, tasks: dict[str, TaskData]
) -> dict[str, dict[str, np.ndarray]]:
    splits = resolve_splits(cfg, source.info.splits)
    out = {}
    for name, task in tasks.items():
        out[name] = {
            role: task.labelled(source.split_rows(s)) if s else np.zeros(0, np.int64)
            for role, s in splits.items()
        }
        if not len(out[name]["train"]):
            raise ValueError(f"task {name!r} labels no rows of split {splits['train']!r}")
    return out


def _key(r: RunSpec, sides: dict, device: torch.device) -> str:
    """A run's profile key: its side network (a baseline: also its method and options)."""
    t = r.train
    baseline = (
        {"method": t.method, **{k: getattr(t, k) for k in method_uses(t.method)}}
        if get_method(t.method).live
        else None
    )
    return profile_key(sides[r.key], t.optimizer, use_amp(t.amp, device), baseline)


def _build(r: RunSpec, sides: dict, source: DataSource) -> Any:
    """A fresh live baseline of ``r`` on the source's backbone (as ``make_run`` builds it)."""
    t = r.train
    return lambda: build_baseline(t.method, source.backbone.model, sides[r.key], t, t.seed)


def _profiles(
    saved: dict | None,
    runs: list[RunSpec],
    sides: dict,
    dtype: torch.dtype,
    device: torch.device,
    model: str,
    source: DataSource,
) -> dict[str, Profile]:
    keys: dict[str, tuple] = {}
    baselines: dict[str, RunSpec] = {}
    for r in runs:
        key = _key(r, sides, device)
        if get_method(r.train.method).live:
            baselines.setdefault(key, r)
        else:
            keys[key] = (sides[r.key], r.train.optimizer, use_amp(r.train.amp, device))
    if saved is not None and set(saved.get("profiles", {})) == {*keys, *baselines}:
        return {k: Profile(**v) for k, v in saved["profiles"].items()}
    out = profiles(keys, dtype, device, model)
    for key, r in baselines.items():  # before any side group prunes the shared backbone
        out[key] = baseline_profile(
            _build(r, sides, source),
            source.backbone.model,
            sides[r.key],
            r.train.optimizer,
            use_amp(r.train.amp, device),
            device,
            model,
        )
    return out


def _choose(
    cfg: SweepConfig,
    source: DataSource,
    device: torch.device,
    rows: dict,
    specs: list[RunSpec],
    sides: dict,
    progress: bool,
) -> Inputs:
    """The inputs (``--cache``) of ``specs``."""
    return choose_inputs(
        cfg.cache,
        source,
        device,
        *_reads(rows, specs, sides),
        cfg.workers,
        progress,
        cfg.max_memory,
    )


def _reads(rows: dict, specs: list[RunSpec], sides: dict) -> tuple[list[np.ndarray], set]:
    """What ``specs`` read: every task's train and val rows, the feed keys of the runs."""
    return (
        [rows[t][role] for t in rows for role in ("train", "val")],
        {i for r in specs for i in side_inputs(sides[r.key])} or {0},
    )


def _cache_need(source: DataSource, rows: dict, specs: list[RunSpec], sides: dict) -> int | None:
    """Bytes ``--cache`` would hold for ``specs`` (None: live)."""
    return cache_need(source, *_reads(rows, specs, sides))


def _profile_of(
    r: RunSpec, sides: dict, profs: dict[str, Profile], device: torch.device
) -> Profile:
    return profs[_key(r, sides, device)]


def _groups(
    cfg: SweepConfig,
    saved: dict | None,
    runs: list[RunSpec],
    sides: dict,
    rows: dict,
    profs: dict[str, Profile],
    device: torch.device,
    choice: Any,
    budget: int | None,
) -> list[Group]:
    if saved is not None:
        return [Group.from_dict(g) for g in saved["groups"]]
    estimates = {}
    for r in runs:
        batch = int(r.train.plan(len(rows[r.task]["train"]))["batch_size"])
        estimates[r.key] = _profile_of(r, sides, profs, device).memory_at(batch)
    # a live baseline backpropagates through its own backbone copy: one group each, first
    # (built before the side groups prune the shared backbone to the blocks they read)
    alone = [Group([r.key], estimates.pop(r.key)) for r in runs if get_method(r.train.method).live]
    if not estimates:
        return alone
    if budget is None:
        here = choice.bytes if choice is not None and choice.on(device) else 0
        budget = default_budget(device, here)
    return alone + make_groups(estimates, budget)


def _write_doc(
    out: Path,
    cfg: SweepConfig,
    runs: list[RunSpec],
    sides: dict,
    profs: dict[str, Profile],
    groups: list[Group],
    device: torch.device,
) -> None:
    doc = {
        "config": cfg.to_dict(),
        "runs": [r.to_dict() for r in runs],
        "profiles": {k: p.to_dict() for k, p in profs.items()},
        # each run's profile, keyed where it was planned: a worker whose device (or CPU's
        # bf16) differs from the planner's looks the profile up here
        "profile_keys": {r.key: _key(r, sides, device) for r in runs},
        "groups": [g.to_dict() for g in groups],
    }
    atomic_write_text(out / SWEEP_JSON, json.dumps(doc, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------- groups


def _group_file(out: Path, gid: int) -> Path:
    return out / "groups" / f"{gid}.json"


def _finished(spec: RunSpec) -> bool:
    """A run whose metrics.json says it ended (trained or diverged): kept on resume."""
    path = Path(spec.train.out) / ckpt.METRICS
    if not path.is_file():
        return False
    metrics = read_json(
        path, "delete it and rerun with --resume (the run then continues from its checkpoint)"
    )
    return isinstance(metrics, dict) and metrics.get("status") in ("trained", "diverged")


def _group_size(
    specs: list[RunSpec], rows: dict, sides: dict, profs: dict[str, Profile], device: torch.device
) -> tuple[int, float]:
    """A group's optimizer steps (all runs) and estimated training FLOPs: its cost when a
    cluster places groups, largest first."""
    steps, flops = 0, 0.0
    for r in specs:
        plan = r.train.plan(len(rows[r.task]["train"]))
        prof = _profile_of(r, sides, profs, device)
        own = get_method(r.train.method).live  # backpropagates through its backbone copy
        per_image = prof.side_flops + ((prof.backbone_flops or 0) if own else 0)
        steps += int(plan["steps"])
        flops += 3.0 * per_image * int(plan["steps"]) * int(plan["batch_size"])  # fwd + bwd
    return steps, flops


def train_group_alone(
    cfg: SweepConfig,
    gid: int,
    storage_options: dict | None,
    on_tick: Any = None,
    source: DataSource | None = None,
) -> bool:
    """Train group ``gid`` of the sweep planned in ``cfg.out`` (its sweep.json), with plain
    arguments: a cluster worker's task. Its runs resume from their checkpoints; a finished
    group is left as it is. ``source``: an open source to reuse (else opened and closed
    here). Returns whether every run of the group ended (False: --stop-at)."""
    out = Path(cfg.out)
    if _group_file(out, gid).is_file():
        return True
    doc = read_json(out / SWEEP_JSON, _DAMAGED)
    groups = [Group.from_dict(g) for g in doc["groups"]]
    device = pick_device(cfg.device)
    with _planned(cfg, doc, groups[gid].runs, device, storage_options, source) as plan:
        mine, specs, rows, sides, profs = plan
        todo = [r for r in specs if not _finished(r)]
        inputs = _choose(cfg, mine, device, rows, todo or specs, sides, False)
        return _train_group(
            cfg, mine, inputs, device, gid, len(groups), specs, sides, profs, False, on_tick
        )


def costs_alone(cfg: SweepConfig, storage_options: dict | None) -> None:
    """Measure the costs of the sweep planned in ``cfg.out`` (``--costs``; every run
    trained) here: a cluster worker's task, so they are timed on the training device."""
    doc = read_json(Path(cfg.out) / SWEEP_JSON, _DAMAGED)
    device = pick_device(cfg.device)
    keys = [f"{r['task']}/{r['id']}" for r in doc["runs"]]
    with _planned(cfg, doc, keys, device, storage_options, None) as (mine, specs, _, sides, _):
        _with_speed(cfg, specs, sides, mine.info.dtype, device, False, mine)


@contextlib.contextmanager
def _planned(
    cfg: SweepConfig,
    doc: dict[str, Any],
    keys: list[str],
    device: torch.device,
    storage_options: dict | None,
    source: DataSource | None,
) -> Iterator[tuple[DataSource, list[RunSpec], dict, dict, dict[str, Profile]]]:
    """The runs ``keys`` of a planned sweep (its sweep.json ``doc``) rebuilt where they
    train: (source, specs, rows, side configs, profiles by run). ``source``: an open one
    to reuse (else opened and closed here)."""
    by_key = {r.key: r for r in map(RunSpec.from_dict, doc["runs"])}
    specs = [by_key[k] for k in keys]
    mine = source or open_source(cfg, device, storage_options)
    try:
        tasks = {r.task: mine.task(r.task) for r in specs}
        rows = _task_rows(cfg, mine, tasks)
        sides = {
            r.key: build_side_config(r.train, mine.info, len(tasks[r.task].classes)) for r in specs
        }
        profs = {k: Profile(**v) for k, v in doc["profiles"].items()}
        planned = doc.get("profile_keys") or {r.key: _key(r, sides, device) for r in specs}
        yield mine, specs, rows, sides, {r.key: profs[planned[r.key]] for r in specs}
    finally:
        if source is None:
            mine.close()


def _train_group(
    cfg: SweepConfig,
    source: DataSource,
    inputs: Inputs,
    device: torch.device,
    gid: int,
    n: int,
    specs: list[RunSpec],
    sides: dict[str, SideConfig],
    profs: dict[str, Profile],
    progress: bool,
    on_tick: Any = None,
) -> bool:
    """Train one group's runs to their ends (or --stop-at): all done? ``profs``: each
    run's profile, by run key."""
    t0, bytes0 = time.perf_counter(), inputs.bytes_read
    todo = [s for s in specs if not _finished(s)]
    runs = []
    for s in todo:
        resume = (Path(s.train.out) / ckpt.CHECKPOINT).is_file()
        run = make_run(dataclasses.replace(s.train, resume=resume), source, device, s.key)
        run.start(tunable=frozenset())  # a member's checkpoint is its own, exactly
        runs.append(run)
    if on_tick is not None:  # before the first step: where the checkpoints left off
        on_tick(runs)
    engine = Engine(
        runs, inputs, progress, cfg.batching, label=f"group {gid + 1}/{n}", on_tick=on_tick
    )
    done = engine.train() if runs else True
    extra = {"bytes_read": inputs.bytes_read}
    for s, run in zip(todo, runs, strict=True):
        metrics = run.finish(extra)
        row = run_row(s, sides[s.key], metrics, gid, profs[s.key])
        if get_method(s.train.method).live and metrics["complete"] and cfg.costs:  # unpruned
            row.update(_baseline_costs(cfg, s, sides, source, row["batch_size"], device, run.model))
        _write_row(Path(s.train.out), row)
    if not done:
        return False
    stats = {
        "group": gid,
        "num_runs": len(specs),
        "bytes_read": inputs.bytes_read - bytes0,
        "seconds": time.perf_counter() - t0,
        "ticks": engine.ticks,
        "batching": [
            {"runs": [m.name for m in g.members], "mode": g.mode, "timing_s": g.timing}
            for _, lanes in engine.feeds.values()
            for lane in lanes
            for g in lane.groups
        ],
    }
    safe_subdir(cfg.out, "groups")
    atomic_write_text(
        _group_file(Path(cfg.out), gid), json.dumps(stats, indent=2, sort_keys=True) + "\n"
    )
    return True


def _write_row(run_dir: Path, row: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RESULT, json.dumps(row, indent=2, sort_keys=True) + "\n")


def _baseline_costs(
    cfg: SweepConfig,
    r: RunSpec,
    sides: dict,
    source: DataSource,
    batch: int,
    device: torch.device,
    model: torch.nn.Module,
) -> dict[str, Any]:
    """A live baseline's training img/s on images (its backbone forward and backward: the
    paper's setting, its only one) and its trained model's inference at batch 1."""
    net, classes = source.backbone.model, sides[r.key].num_classes
    make = lambda b: image_inputs(net, classes, b, device)
    amp = use_amp(r.train.amp, device)
    speed = step_speed(
        _build(r, sides, source), make, r.train.optimizer, batch, cfg.speed_batches, device, amp
    )
    model = model.to(device).eval()
    return {
        "train_img_s": speed,
        "train_img_s_live": speed,
        "costs_measured": True,
        "infer_memory_b1": inference_memory(model, make, device, amp)[0],
        "infer_img_s_b1": inference_speed(model, make, cfg.speed_batches, device, amp),
    }


# ---------------------------------------------------------------------------- the end


def _with_speed(
    cfg: SweepConfig,
    runs: list[RunSpec],
    sides: dict,
    dtype: Any,
    device: torch.device,
    progress: bool,
    source: DataSource,
) -> list[dict[str, Any]]:
    """Every run's row, its side network's costs measured once per (network, optimizer,
    batch): training img/s from the store and, with ``live_metrics``, the paper's setting
    (training memory and img/s with the backbone forward, inference at batch 1)."""
    rows = [
        read_json(Path(r.train.out) / RESULT, "delete it and rerun with --resume") for r in runs
    ]
    todo = [
        (r, row)
        for r, row in zip(runs, rows, strict=True)  # baselines: timed above
        if not row.get("costs_measured") and not get_method(row["method"]).live
    ]
    if not cfg.costs or not todo:
        return rows
    backbone = _measuring_backbone(cfg, source, [sides[r.key] for r, _ in todo], device)
    keys = [f"{_key(r, sides, device)}|{row['batch_size']}" for r, row in todo]
    note(_costs_plan(cfg, len(set(keys)), backbone is not None), progress)
    costs: dict[str, dict[str, Any]] = {}
    with progress_bar(len(todo), "costs", "run", progress) as bar:
        for (r, row), key in zip(todo, keys, strict=True):
            if key not in costs:
                t0 = time.perf_counter()
                costs[key] = _side_costs(
                    cfg,
                    sides[r.key],
                    r.train.optimizer,
                    row["batch_size"],
                    dtype,
                    device,
                    use_amp(r.train.amp, device),
                    backbone,
                )
                if len(costs) == 1 and len(set(keys)) > 1:  # the first: an estimate
                    left = (time.perf_counter() - t0) * (len(set(keys)) - 1)
                    note(
                        f"costs: about {left:.0f} s more for the other "
                        f"{len(set(keys)) - 1} config(s)",
                        progress,
                    )
            row.update(costs[key], costs_measured=True)
            _write_row(Path(r.train.out), row)
            bar.update()
    return rows


def _costs_plan(cfg: SweepConfig, configs: int, live: bool) -> str:
    """What the cost measurement is about to time, said before it starts."""
    steps = cfg.speed_batches + 2  # + the warm-up steps
    what = f"{steps} training steps from memory" if cfg.speed_batches else "memory"
    if live:
        what += (
            f", {steps} with the backbone forward and {steps} inference forwards at batch 1"
            if cfg.speed_batches
            else " with the backbone"
        )
    return (
        f"costs: measuring {configs} distinct config(s) ({what} each, after training); "
        "--no-costs skips this"
    )


def _measuring_backbone(
    cfg: SweepConfig, source: DataSource, sides: list[SideConfig], device: torch.device
) -> Any:
    """The backbone the paper's-setting costs run: the live one, or (a store sweep) the
    store's model with random weights (speed and memory do not depend on the values);
    None when not asked for, or the model cannot be built at the store's size."""
    if not (cfg.live_metrics and sides):
        return None
    if cfg.live:
        return source.backbone
    from losa_cache.backbone import create_backbone

    try:
        backbone = create_backbone(
            str(source.info.fingerprint.get("model")), random_init=True, device=device
        )
    except (ValueError, RuntimeError, OSError):
        return None
    if (backbone.tokens, backbone.dim) != (source.info.tokens, source.info.dim):
        return None  # extracted at another size (or a video model's clip)
    backbone.prune(list(range(max(deepest_block(side_inputs(s)) for s in sides) + 1)))
    return backbone


def _side_costs(
    cfg: SweepConfig,
    side: SideConfig,
    optimizer: str,
    batch: int,
    dtype: Any,
    device: torch.device,
    amp: bool,
    backbone: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "train_img_s": train_speed(side, optimizer, batch, cfg.speed_batches, dtype, device, amp)
    }
    if backbone is None:
        return out
    from losa_cache.side import create_side

    make = live_inputs(side, backbone, device, amp)
    weights = list(backbone.model.parameters())
    build = lambda: create_side(side)
    out["train_memory_b1_live"] = step_memory(build, make, optimizer, 1, device, amp, weights)[0]
    out["train_img_s_live"] = step_speed(
        build, make, optimizer, batch, cfg.speed_batches, device, amp, fresh=True
    )
    model = create_side(side).to(device).eval()
    out["infer_memory_b1"] = inference_memory(model, make, device, amp, weights)[0]
    out["infer_img_s_b1"] = inference_speed(model, make, cfg.speed_batches, device, amp)
    return out


def _finish(
    cfg: SweepConfig,
    out: Path,
    rows: list[dict[str, Any]],
    groups: list[Group],
    choice: Any,
    inputs: Inputs | None,
    notes: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    best = best_runs(rows)
    for r in rows:
        r["best"] = best.get(r["task"]) is r
    paths = export_best(out, best)
    stats = [
        read_json(
            _group_file(out, g), "delete it and rerun with --resume (the group's runs are kept)"
        )
        for g in range(len(groups))
    ]
    seconds = sum(s["seconds"] for s in stats)
    images = sum(r["train_images"] for r in rows)
    diverged = [
        {
            "run": f"{r['task']}/{r['run']}",
            "error": r["error"],
            "last_checkpoint": r["last_checkpoint"],
        }
        for r in rows
        if r["status"] == "diverged"
    ]
    summary = {
        "complete": True,
        "out": str(out),
        "store": cfg.store,
        "live": cfg.live,
        "runs": len(rows),
        "tasks": sorted({r["task"] for r in rows}),
        "cache": choice.to_dict() if choice else None,
        "mode": "live"
        if cfg.live
        else "memory"
        if choice and choice.mode != "none"
        else "streaming",
        "groups": [{**g.to_dict(), **s} for g, s in zip(groups, stats, strict=True)],
        "bytes_read": sum(s["bytes_read"] for s in stats)
        + (inputs.cache.bytes_read if inputs is not None and inputs.cache else 0),
        "train_seconds": seconds,
        "config_images": images,
        "config_images_per_s": images / seconds if seconds else None,
        "best": {
            t: {
                "run": r["run"],
                "val_acc": r["val_acc"],
                "test_acc": r["test_acc"],
                "adapter": paths[t],
            }
            for t, r in best.items()
        },
        "diverged": diverged,
        "notes": notes,
        **(extra or {}),
    }
    write_results(out, rows, summary)
    return {"summary": summary, "results": rows}


def _say(progress: bool, lines: list[str]) -> None:
    for line in lines:
        note(line, progress)
