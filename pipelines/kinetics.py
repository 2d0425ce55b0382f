"""Kinetics-400 with the LoSA paper's video recipe, one command: plan, extract, train, score.

The recipe is the paper's video hyperparameter table (arXiv 2402.02887, Table 13 in the
copy in /work/shared/papers; Table 12 there is the large-scale image one): SGD momentum
0.9, batch 64, cosine schedule, 2.5 linear warmup epochs, base lr 0.04, 30 epochs, rank
64, 224 px; Sec. 4.3: 32 frames, an unfactorised ViViT built from the same pretrained
*image* checkpoint as the image experiments (``--model vivit_b --checkpoint ViT-B_16.npz``
inflates it: losa_cache/backbone/vivit.py). "Base lr 0.04" is read as the peak lr at the
table's batch of 64 (the project's SGD lr is given per 512 images and scaled linearly, so
another ``--batch-size`` scales it).

Rows (the paper's Table 2 compares these on Kinetics): LoSA with Eq. 6 (g_spatial +
g_temporal) and linear probing, both from one feature store; full fine-tuning, live (the
backbone trained, no store). Each row is trained once with the fixed recipe (no lr is
chosen) and its final model is scored once on ``val`` (Kinetics' test labels are not
public), single view; ``losa-cache eval --adapter RUN --dataset kinetics:ROOT`` adds the
multi-view score.

``--runlocal`` is big_vision's tiny-run switch: the same code on the project's generated
motion clips (pipelines/video_tasks.py, the embedded demo images: no files needed) through
``vivit_demo`` (the demo ViT inflated to 8 frames), a few epochs at CPU scale.

    python -m losa_cache.pipelines.kinetics --root /data/k400 --model vivit_b \\
        --checkpoint ViT-B_16.npz --out runs/k400 --dry-run        # the plan only
    python -m losa_cache.pipelines.kinetics --root /data/k400 --model vivit_b \\
        --checkpoint ViT-B_16.npz --out runs/k400                  # everything (GPU)
    python -m losa_cache.pipelines.kinetics --runlocal --out /tmp/k  # smoke run (CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

#: the batch the project's SGD lr is given for (TrainConfig scales lr by batch / 512)
LR_BATCH = 512


@dataclass(frozen=True)
class Recipe:
    """The paper's video training settings (defaults) and the clip sampling."""

    batch_size: int = 64
    lr: float = 0.04  # peak lr at batch_size
    momentum: float = 0.9
    warmup_epochs: float = 2.5
    epochs: float = 30.0
    rank: int = 64
    frames: int = 32
    stride: int = 2
    layers: str = "evenly:4"  # stored blocks: all 12 of ViViT-B at 32 frames is ~58 MB a clip

    def lr_per_512(self) -> float:
        """The lr TrainConfig takes: its SGD lr is per 512 images, scaled to the batch."""
        return self.lr * LR_BATCH / self.batch_size


PAPER = Recipe()
#: --runlocal: motion clips of 8 frames through vivit_demo, seconds on a CPU
RUNLOCAL = Recipe(
    batch_size=8, epochs=2.0, warmup_epochs=0.5, rank=4, frames=8, stride=1, layers="all"
)
#: row name -> what differs per row (cached rows read the store; full trains live)
ROWS: dict[str, dict[str, Any]] = {
    "losa": {"method": "losa", "temporal": True},
    "linear": {"method": "linear"},
    "full": {"method": "full", "live": True},
}
REPORT_SPLIT = "val"


def dataset_spec(args: argparse.Namespace) -> str:
    """``kinetics:ROOT``, or with --runlocal the generated motion clips (built once)."""
    if not args.runlocal:
        return f"kinetics:{args.root}"
    from losa_cache.pipelines.video_tasks import SMALL, build_motion_task, demo_objects

    clips = Path(args.out) / "clips"
    if not clips.exists():
        build_motion_task(clips, SMALL, args.seed, objects=demo_objects)
    return f"videofolder:{clips}"


def extract_config(args: argparse.Namespace, dataset: str) -> Any:
    from losa_cache.extract import ExtractConfig

    r: Recipe = args.recipe
    return ExtractConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        random_init=args.random_init,
        dataset=dataset,
        store=str(Path(args.out) / "store.zarr"),
        layers=r.layers,
        frames=r.frames,
        stride=r.stride,
        workers=args.workers,
        device=args.device,
    )


def train_config(args: argparse.Namespace, row: str, dataset: str, train_rows: int) -> Any:
    """One row's run: the recipe, warmup in epochs turned into steps, scored once on val."""
    from losa_cache.train import TrainConfig

    r: Recipe = args.recipe
    kw = dict(ROWS[row])
    live = kw.pop("live", False)
    batch = min(r.batch_size, train_rows)
    source: dict[str, Any] = {"store": str(Path(args.out) / "store.zarr")}
    if live:
        source = {
            "live": True,
            "model": args.model,
            "checkpoint": args.checkpoint,
            "pretrained": args.pretrained,
            "random_init": args.random_init,
            "dataset": dataset,
            "frames": r.frames,
            "stride": r.stride,
        }
    return TrainConfig(
        out=str(Path(args.out) / "runs" / row),
        rank=r.rank,
        epochs=r.epochs,
        batch_size=r.batch_size,
        optimizer="sgd",
        momentum=r.momentum,
        lr=r.lr_per_512(),
        warmup_steps=math.ceil(r.warmup_epochs * train_rows / batch),
        train_split="train",
        val_split="none",  # a fixed recipe: nothing is selected
        test_split=REPORT_SPLIT,
        seed=args.seed,
        workers=0 if args.runlocal else 4,
        device=args.device,
        **source,
        **kw,
    )


def plan_text(args: argparse.Namespace, dataset: str) -> str:
    """The store's size and the runs, before anything is extracted."""
    from losa_cache.plan import plan

    r: Recipe = args.recipe
    p = plan(args.model, dataset, r.layers, measure=False, frames=r.frames)
    return (
        f"Kinetics recipe on {dataset}: {p['splits']} clips, {args.model} ({r.frames} "
        f"frames, stride {r.stride}), blocks {p['layers']}\n"
        f"store: {p['bytes_total'] / 1e9:,.2f} GB in {Path(args.out) / 'store.zarr'}\n"
        f"runs: {', '.join(args.row_list)}; {json.dumps(asdict(r), sort_keys=True)}"
    )


def run(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """Extract once, then each row; a row's number is its final model on val, once."""
    from losa_cache.extract import extract
    from losa_cache.store import open_store
    from losa_cache.train import train

    t0 = time.perf_counter()
    ext = extract(extract_config(args, dataset), progress=not args.quiet)
    extract_s = time.perf_counter() - t0
    train_rows = len(open_store(ext.store).split_rows("train"))
    rows = {}
    for name in args.row_list:
        cfg = train_config(args, name, dataset, train_rows)
        m = train(cfg, progress=not args.quiet)
        rows[name] = {
            "val_acc": m["test_acc"],
            "learned_params": m["learned_params"],
            "train_seconds": m["train_seconds"],
            "images_per_s": m["images_per_s"],
            "plan": m["plan"],
            "live": cfg.live,
            "adapter": m.get("adapter"),
        }
    return {
        "dataset": dataset,
        "model": args.model,
        "recipe": asdict(args.recipe),
        "extract_seconds": extract_s,
        "store_bytes": ext.bytes_written,
        "rows": rows,
    }


def table(doc: dict[str, Any]) -> str:
    lines = ["| row | learned params | val top-1 | train clips/s |", "|---|---:|---:|---:|"]
    for name, m in doc["rows"].items():
        acc = "-" if m["val_acc"] is None else f"{100 * m['val_acc']:.1f}%"
        lines.append(f"| {name} | {m['learned_params']:,} | {acc} | {m['images_per_s']:.1f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=None, help="Kinetics root (train.csv, validate.csv, ...)")
    p.add_argument(
        "--runlocal",
        action="store_true",
        help="tiny run: generated motion clips, vivit_demo, CPU scale",
    )
    p.add_argument("--out", default="runs/kinetics")
    p.add_argument(
        "--model", default=None, help="ViViT alias (default vivit_b; runlocal vivit_demo)"
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", default=None, help="image (or ViViT) weights file")
    weights.add_argument("--pretrained", action="store_true", help="timm weights (local cache)")
    weights.add_argument("--random-init", action="store_true", help="random backbone (tests)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    p.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override (lr scales with it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=-1, help="extraction decoding processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if not args.runlocal and not args.root:
        p.error("give --root (a Kinetics folder), or --runlocal for the tiny run")
    if not args.runlocal and not (
        args.checkpoint or args.pretrained or args.random_init
    ):  # demo: embedded
        p.error(
            "give the backbone's weights: --checkpoint (an image checkpoint is inflated)"
            ", --pretrained or --random-init"
        )
    args.model = args.model or ("vivit_demo" if args.runlocal else "vivit_b")
    recipe = RUNLOCAL if args.runlocal else PAPER
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size}
    recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    if args.batch_size is not None:  # keep lr / batch: the peak lr scales with the batch
        recipe = replace(
            recipe,
            lr=(RUNLOCAL if args.runlocal else PAPER).lr_per_512() * args.batch_size / LR_BATCH,
        )
    args.recipe = recipe
    args.row_list = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(args.row_list) - set(ROWS))
    if unknown:
        p.error(f"unknown row(s) {unknown}; choose among {', '.join(ROWS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    dataset = dataset_spec(args)
    print(plan_text(args, dataset), flush=True)
    if args.dry_run:
        return {"plan": True, "dataset": dataset, "recipe": asdict(args.recipe)}
    doc = run(args, dataset)
    print(table(doc))
    out = Path(args.out) / "kinetics_results.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {out}")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
