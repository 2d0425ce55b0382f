"""VTAB-1k, full size, one command: extract every task, tune on 800/200, test, print Table 1.

For users who have the 19 VTAB-1k tasks in the PEFT community layout
(``ROOT/<task>/{train800,val200,train800val200,test}.txt``) and a backbone's weights. Per
task: one feature store (``--layers``), one sweep over the lr grid (and methods) on
train800 -> val200, the val-best config retrained on train800val200 and scored on test.
The table is the paper's Table 1 layout: the tasks in their groups, the group means
(Natural / Specialized / Structured) and the mean of the three group means.

The defaults are the protocol Table 1 is measured with: every image squashed to 224 x 224
(resized whole, no crop: the VTAB-1k preprocessing of the PETL papers LoSA compares with,
and MIST's "directly resized to 224 x 224"; ``--crop-mode center`` is timm's eval crop),
LoSA at ranks 4, 8 and 16, linear probing and MIST, each lr chosen on val200. The store
holds what the methods read: each method's side network says which blocks and taps
(``embed``, ``sum:k``, ...) it reads, and a ``sum:k`` is stored as ``embed`` plus the
blocks, which the feed sums for every k MIST tries.

    python -m losa_cache.pipelines.vtab --root /data/vtab-1k --model vit_b_orig \\
        --checkpoint ViT-B_16.npz --out runs/vtab
    python -m losa_cache.pipelines.vtab --root /data/vtab-1k --model vit_b_orig \\
        --pretrained --dry-run        # the plan: tasks found, store sizes, runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from losa_cache.pipelines.accuracy import (
    Budget,
    add_dask_args,
    dask_config,
    method_name,
    run_cached,
)

#: The 19 VTAB-1k tasks, in the paper's Table 1 order, by group.
GROUPS: dict[str, tuple[str, ...]] = {
    "Natural": (
        "cifar",
        "caltech101",
        "dtd",
        "oxford_flowers102",
        "oxford_iiit_pet",
        "svhn",
        "sun397",
    ),
    "Specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "Structured": (
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ),
}
TASKS = tuple(t for group in GROUPS.values() for t in group)
LIST_FILES = ("train800", "val200", "train800val200", "test")


def find_tasks(root: Path, tasks: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(tasks present, task -> why missing) under ``root``."""
    found, missing = [], {}
    for task in tasks:
        absent = [f for f in LIST_FILES if not (root / task / f"{f}.txt").is_file()]
        if absent:
            missing[task] = f"no {', '.join(a + '.txt' for a in absent)} in {root / task}"
        else:
            found.append(task)
    return found, missing


def group_means(acc: dict[str, float]) -> dict[str, float | None]:
    """Mean per group over the tasks present, and the mean of the group means (Table 1)."""
    means: dict[str, float | None] = {}
    for group, tasks in GROUPS.items():
        vals = [acc[t] for t in tasks if t in acc]
        means[group] = sum(vals) / len(vals) if vals else None
    present = [v for v in means.values() if v is not None]
    means["Mean"] = sum(present) / len(present) if present else None
    return means


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per method, the 19 task columns, group means, mean."""
    head = [*TASKS, *GROUPS, "Mean"]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for method, acc in results.items():
        means = group_means(acc)
        cells = [_pct(acc.get(t)) for t in TASKS] + [_pct(means[g]) for g in (*GROUPS, "Mean")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def methods_of(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Method name -> its sweep entry (method, rank, layers) from --methods/--ranks/
    --side-layers (the accuracy harness's CACHED form)."""
    out: dict[str, dict[str, Any]] = {}
    from losa_cache.side import get_side_class

    for side in args.methods.split(","):
        uses = get_side_class(side).uses
        ranks = [int(r) for r in args.ranks.split(",")] if "rank" in uses else [None]
        for rank in ranks:
            layers = args.side_layers if "layers" in uses else "all"
            entry = {"method": side, "rank": rank, "layers": layers}
            out[method_name(side, rank, layers)] = {
                k: v for k, v in entry.items() if k == "method" or k in uses
            }
    return out


def store_taps(args: argparse.Namespace) -> str:
    """The ``--taps`` spec holding every key the methods read (asked of each method's side
    network; ``sum:k`` as its parts: embed and the blocks, so any k can be summed)."""
    from losa_cache.plan import Backbone
    from losa_cache.side import SideConfig
    from losa_cache.train.keys import derived_parts, key_tap, side_inputs

    bb = Backbone.load(args.model)
    taps = {"blocks"}
    for entry in methods_of(args).values():
        options = {k: v for k, v in entry.items() if k not in ("rank", "layers")}
        config = SideConfig(
            num_layers=bb.depth,
            dim=bb.dim,
            tokens=bb.tokens,
            num_classes=2,
            rank=entry.get("rank") or 4,
            layers=entry.get("layers", "all"),
            prefix_tokens=bb.prefix_tokens,
            **options,
        )
        for key in side_inputs(config):
            taps |= {key_tap(part)[0] for part in derived_parts(key) or (key,)}
    order = ("blocks", "embed", "attn", "mlp")
    return ",".join(sorted(taps, key=lambda t: (order.index(t) if t in order else 9, t)))


def plan_text(args: argparse.Namespace, found: list[str], missing: dict[str, str]) -> str:
    """What a run would do: tasks, store size per task, runs per task."""
    from losa_cache.plan import plan

    lines = [f"VTAB-1k under {args.root}: {len(found)} of {len(args.task_list)} tasks found"]
    lines += [f"  missing {t}: {why}" for t, why in missing.items()]
    total = 0
    for task in found:
        p = plan(
            args.model,
            f"vtab1k:{Path(args.root) / task}",
            args.layers,
            measure=False,
            taps=args.taps,
        )
        total += p["bytes_total"]
        lines.append(
            f"  {task}: {p['images']:,} images, store {p['bytes_total'] / 1e9:.2f} GB "
            f"({len(p['layers'])} blocks x {p['tokens']} tokens x {p['dim']}, taps {args.taps})"
        )
    n = len(methods_of(args)) * len(args.lr_list)
    lines.append(
        f"stores: {total / 1e9:.2f} GB in {args.out}/stores; per task {n} sweep runs "
        f"({args.epochs:g} epochs, batch {args.batch_size}, {args.optimizer}, lrs "
        f"{args.lr_list}) + {len(methods_of(args))} final run(s) on train800val200"
    )
    return "\n".join(lines)


def run_task(task: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Extract the task's store (resumed where partial; a finished store made with other
    settings, e.g. another crop mode, is refused), then sweep + final runs."""
    from losa_cache import api
    from losa_cache.extract_config import ExtractConfig

    store = Path(args.out) / "stores" / f"{task}.zarr"
    t0 = time.perf_counter()
    dask = dask_config(args)  # None: in this process
    api.extract(
        ExtractConfig(
            model=args.model,
            checkpoint=args.checkpoint,
            pretrained=args.pretrained,
            random_init=args.random_init,
            dataset=f"vtab1k:{Path(args.root) / task}",
            store=str(store),
            layers=args.layers,
            taps=args.taps,
            crop_mode=args.crop_mode,
            input_size=args.input_size,
            workers=args.workers,
            device=args.device,
        ),
        progress=not args.quiet,
        dask=dask,
    )
    budget = Budget(
        batch_size=args.batch_size, cached_lrs=tuple(args.lr_list), cached_optimizer=args.optimizer
    )
    return run_cached(
        store,
        Path(args.out) / "runs" / task,
        budget,
        args.epochs,
        time.perf_counter() - t0,
        methods_of(args),
        progress=not args.quiet,
        dask=dask,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder holding the 19 task folders")
    p.add_argument("--out", default="runs/vtab")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list (default: all 19)")
    p.add_argument("--allow-missing", action="store_true", help="skip absent tasks")
    p.add_argument("--model", default="vit_b_orig")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", default=None, help="backbone weights file")
    weights.add_argument("--pretrained", action="store_true", help="timm weights (local cache)")
    weights.add_argument("--random-init", action="store_true", help="random backbone (tests)")
    p.add_argument("--layers", default="all", help="blocks stored (all | evenly:N | ...)")
    p.add_argument(
        "--crop-mode",
        default="squash",
        choices=("squash", "center"),
        help="squash: the whole image resized to the input size (VTAB-1k's protocol)",
    )
    p.add_argument("--input-size", type=int, default=224, help="pixels (Table 1: 224)")
    p.add_argument("--methods", default="linear,losa,mist", help="comma list of methods")
    p.add_argument("--ranks", default="4,8,16", help="LoSA ranks (Table 1: 4,8,16)")
    p.add_argument("--side-layers", default="all", help="blocks the side network reads")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="lr grid tuned on val200")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    p.add_argument("--epochs", type=float, default=100.0, help="per run (VTAB-1k: 100)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="extraction decoding processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dask_args(p, "each task's")
    args = p.parse_args(argv)
    args.task_list = [t for t in args.tasks.split(",") if t]
    args.lr_list = [float(v) for v in args.lrs.split(",")]
    unknown = sorted(set(args.task_list) - set(TASKS))
    if unknown:
        p.error(f"unknown task(s) {unknown}; the 19 VTAB-1k tasks are {', '.join(TASKS)}")
    args.taps = store_taps(args)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    found, missing = find_tasks(Path(args.root), args.task_list)
    print(plan_text(args, found, missing), flush=True)
    if missing and not args.allow_missing:
        raise SystemExit(
            f"{len(missing)} task(s) missing (see above); fix --root, pass "
            "--tasks, or --allow-missing"
        )
    if args.dry_run:
        return {"plan": True, "found": found, "missing": missing}
    per_task = {task: run_task(task, args) for task in found}
    results = {m: {t: per_task[t][m]["test_acc"] for t in found} for m in methods_of(args)}
    print(table(results))
    doc = {
        "root": args.root,
        "model": args.model,
        "tasks": found,
        "missing": missing,
        "results": results,
        "means": {m: group_means(a) for m, a in results.items()},
        "per_task": per_task,
        "config": {k: v for k, v in vars(args).items()},
    }
    out = Path(args.out) / "vtab_results.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
