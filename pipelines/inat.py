"""iNaturalist 2018, full size, one command: plan, extract, train with the paper recipe, eval.

iNat2018 has 437,513 training images; a ViT-B/16 store of every block is ~1.8 TB at fp16,
so the default stores 8 evenly spaced blocks and the plan (sizes, free disk) is printed
before anything is written. Training is the LoSA paper's large-scale recipe (Table 12):
SGD momentum 0.9, batch 512, cosine schedule with 500 warmup steps, lr 0.05, 20,000 steps,
rank 64; accuracy is top-1 on the official val split.

Selection and reporting never share a split: a held-out part of train (``--holdout``,
drawn by a seed, added to the store as split ``holdout``; the rest is ``train_fit``) is
what periodic evaluation and the lr choice (``--lrs``, default the recipe's one lr) look
at; the chosen run's final adapter is then scored ONCE on the reported split (``val``,
the official one; with ``--report test``, on a data set that has a labelled test split,
selection uses ``val`` instead and nothing is held out; iNat2018 has none, and the
recipe says so before it extracts anything).

    python -m losa_cache.pipelines.inat --data-root /data/inat2018 --model vit_b_orig \\
        --checkpoint ViT-B_16.npz --out runs/inat --dry-run      # the plan only
    python -m losa_cache.pipelines.inat --data-root /data/inat2018 --model vit_b_orig \\
        --checkpoint ViT-B_16.npz --out runs/inat                # everything
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Table 12 of the paper (large-scale training).
RECIPE = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "batch_size": 512,
    "warmup_steps": 500,
    "lr": 0.05,
    "steps": 20_000,
    "rank": 64,
}


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Store size, extraction estimate, free disk and the training run, before any work."""
    from losa_cache.plan import plan

    p = plan(
        args.model,
        "inat2018",
        args.layers,
        data_root=args.data_root,
        rank=args.rank,
        side_layers="all",
        measure=not args.dry_run,
    )
    out = Path(args.out)
    probe = next((d for d in (out, *out.parents) if d.exists()), Path("."))
    p["free_bytes"] = shutil.disk_usage(probe).free
    p["train"] = {
        **RECIPE,
        "rank": args.rank,
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
    }
    return p


def check_report(args: argparse.Namespace, splits: dict[str, int]) -> None:
    """Refuse a ``--report`` split the data set lacks before anything is extracted or
    trained (iNat2018's and iNat2021's test labels are not public: their loaders read
    train and val only), rather than after the last training run."""
    if args.report not in splits:
        raise SystemExit(
            f"--report {args.report}: the data set at {args.data_root} has no "
            f"{args.report} split (it has {', '.join(splits)}; iNaturalist's test labels are "
            "not public); report val, the default (selection then on a held-out part of train)"
        )


def plan_text(p: dict[str, Any]) -> str:
    gb = p["bytes_total"] / 1e9
    lines = [
        f"iNat2018: {p['splits']} images; backbone {p['model']}, blocks {p['layers']} "
        f"of {p['depth']} ({p['tokens']} tokens x {p['dim']}, {p['dtype']})",
        f"store: {gb:,.2f} GB ({p['bytes_per_image_layer'] * len(p['layers']) / 1e6:.2f} MB "
        f"per image); free disk {p['free_bytes'] / 1e9:,.1f} GB",
        f"train: {json.dumps(p['train'], sort_keys=True)}; learned params "
        f"{p.get('learned_params', 0):,}",
    ]
    if "extract_seconds_estimate" in p:
        lines.append(
            f"extraction estimate: {p['extract_seconds_estimate'] / 3600:.2f} h on {p['device']}"
        )
    if p["bytes_total"] > p["free_bytes"]:
        lines.append(
            "WARNING: the store does not fit on this disk; store fewer blocks "
            "(--layers evenly:4), fp16, or another --out"
        )
    return "\n".join(lines)


def extract_store(args: argparse.Namespace, store: Path) -> tuple[Any, float]:
    """Extract (resumable); (result, seconds)."""
    from losa_cache.extract import ExtractConfig, extract

    t0 = time.perf_counter()
    ext = extract(
        ExtractConfig(
            model=args.model,
            checkpoint=args.checkpoint,
            pretrained=args.pretrained,
            random_init=args.random_init,
            dataset="inat2018",
            data_root=args.data_root,
            store=str(store),
            layers=args.layers,
            workers=args.workers,
            device=args.device,
        ),
        progress=not args.quiet,
    )
    return ext, time.perf_counter() - t0


def selection_splits(args: argparse.Namespace, store: Path) -> tuple[str, str]:
    """(train split, selection split): ``val`` when the report is on test; else a held-out
    part of train, added to the store (``train_fit`` / ``holdout``, the same on a rerun)."""
    from losa_cache.data.splits import carve_splits
    from losa_cache.store import open_store
    from losa_cache.store.splits import add_split

    if args.report == "test":
        return "train", "val"
    s = open_store(str(store))
    rows = s.split_rows("train", valid_only=False)
    carved = carve_splits(  # extract --split's carving: stratified by class, seeded
        {"train": rows}, s.labels(s.default_task), f"holdout={args.holdout},seed={args.seed}"
    )
    add_split(store, "train_fit", carved["train"])
    add_split(store, "holdout", carved["holdout"])
    return "train_fit", "holdout"


def train_config(
    args: argparse.Namespace, store: Path, out: Path, lr: float, splits: tuple[str, str]
) -> Any:
    """The paper's large-scale recipe at ``lr``: trained on ``splits[0]``, evaluated
    periodically on ``splits[1]``, the reported split left alone."""
    from losa_cache.train import TrainConfig

    return TrainConfig(
        store=str(store),
        out=str(out),
        method="losa",
        rank=args.rank,
        layers="store",
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer="sgd",
        momentum=RECIPE["momentum"],
        lr=lr,
        warmup_steps=min(RECIPE["warmup_steps"], args.steps // 10),
        train_split=splits[0],
        val_split=splits[1],
        test_split="none",
        seed=args.seed,
        device=args.device,
        resume=out.is_dir(),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Extract, train each lr on the fit part, pick by the selection split, score the pick
    once on the reported split."""
    from losa_cache.adapter import load_adapter
    from losa_cache.predict import evaluate_store
    from losa_cache.store import open_store
    from losa_cache.train import train

    out = Path(args.out)
    store = out / "inat2018.zarr"
    ext, extract_s = extract_store(args, store)
    splits = selection_splits(args, store)
    runs = {}
    for lr in args.lr_list:
        cfg = train_config(args, store, out / f"train-lr{lr:g}", lr, splits)
        runs[lr] = (cfg, train(cfg, progress=not args.quiet))
    # the kept model is each run's final one: it is what is selected on, and reported
    best_lr = max(runs, key=lambda lr: runs[lr][1]["final_val_acc"] or 0.0)
    cfg, metrics = runs[best_lr]
    scored = evaluate_store(
        load_adapter(metrics["adapter"]), open_store(str(store)), split=args.report
    )
    doc = {
        "report_split": args.report,
        "report_acc": scored["accuracy"],
        "selection_split": splits[1],
        "selection_acc": {f"{lr:g}": m["final_val_acc"] for lr, (_, m) in runs.items()},
        "best_lr": best_lr,
        "train_rows": metrics["train_rows"],
        "learned_params": metrics["learned_params"],
        "images_per_s": metrics["images_per_s"],
        "train_seconds": sum(m["train_seconds"] for _, m in runs.values()),
        "extract_seconds": extract_s,
        "store_bytes": ext.bytes_written,
        "config": cfg.to_dict(),
    }
    (out / "inat_results.json").write_text(json.dumps(doc, indent=2, default=str))
    return doc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder with train2018.json, val2018.json")
    p.add_argument("--out", default="runs/inat")
    p.add_argument("--model", default="vit_b_orig")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", default=None, help="backbone weights file")
    weights.add_argument("--pretrained", action="store_true", help="timm weights (local cache)")
    weights.add_argument("--random-init", action="store_true", help="random backbone (tests)")
    p.add_argument("--layers", default="evenly:8", help="blocks stored (and read by LoSA)")
    p.add_argument("--rank", type=int, default=RECIPE["rank"])
    p.add_argument("--steps", type=int, default=RECIPE["steps"])
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    p.add_argument(
        "--lrs",
        default=str(RECIPE["lr"]),
        help="lr grid (comma list), chosen on the selection split (default: the recipe's)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.02,
        help="held-out part of train for selection: a fraction (< 1) or a row count",
    )
    p.add_argument(
        "--report",
        default="val",
        choices=("val", "test"),
        help="the split scored once (iNat2018: val; selection then on a held-out part of "
        "train); test: selection on val",
    )
    p.add_argument("--seed", type=int, default=0, help="held-out draw and training seed")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="run even if the store may not fit")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.lr_list = [float(v) for v in args.lrs.split(",") if v]
    args.lr = args.lr_list[0]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    p = make_plan(args)
    check_report(args, p["splits"])
    print(plan_text(p), flush=True)
    if args.dry_run:
        return {"plan": p}
    if p["bytes_total"] > p["free_bytes"] and not args.force:
        raise SystemExit("not enough disk for the store (see above); --force to try anyway")
    doc = run(args)
    print(
        f"iNat2018 {doc['report_split']} top-1: {100 * doc['report_acc']:.2f}% (lr "
        f"{doc['best_lr']:g} chosen on {doc['selection_split']}), learned params "
        f"{doc['learned_params']:,}, train {doc['images_per_s']:,.0f} img/s"
    )
    print(f"wrote {Path(args.out) / 'inat_results.json'}")
    return {"plan": p, **doc}


if __name__ == "__main__":
    main(sys.argv[1:])
