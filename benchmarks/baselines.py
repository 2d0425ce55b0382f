"""Live baselines on VTAB-1k task folders: a command line over ``losa_cache.baselines``.

Every run goes through the training engine (``losa-cache train --live --method M``); the
protocol (lr search on train800 -> val200, best lr retrained on train800val200, scored on
test) is :func:`losa_cache.pipelines.baseline_protocol.run_baseline`.

    python benchmarks/baselines.py --tasks /tmp/vtab_small --model demo
    python benchmarks/baselines.py --tasks /tmp/vtab_small/rotation --model vit_micro \\
        --random-init --steps 5 --lrs 1e-3        # smoke run: seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save

from losa_cache.baselines import list_baselines
from losa_cache.pipelines.baseline_protocol import (
    DEFAULT_EPOCHS,
    FINAL_SPLITS,
    run_baseline,
    task_dirs,
)

COLUMNS = [
    "task",
    "method",
    "best_lr",
    "val_acc_best",
    "test_acc",
    "learned_params",
    "images_per_s",
    "memory_mb_bs1",
    "wall_s",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", required=True, help="task folder(s), comma list, or their parent")
    p.add_argument(
        "--methods", default="full,lora,bitfit", help=f"comma list of {','.join(list_baselines())}"
    )
    p.add_argument("--model", default="demo", help="backbone name or alias")
    p.add_argument("--checkpoint", default=None, help="backbone weights file")
    p.add_argument("--random-init", action="store_true", help="random backbone (smoke runs)")
    p.add_argument("--lrs", default=None, help="comma list overriding every method's lr grid")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: epochs)")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    p.add_argument(
        "--final",
        choices=FINAL_SPLITS,
        default="train800val200",
        help="split of the final run scored on test",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-save", action="store_true", help="print only, write no results JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "random_init": args.random_init,
        "seed": args.seed,
    }
    lrs = [float(v) for v in args.lrs.split(",")] if args.lrs else None
    rows = []
    for task in task_dirs(args.tasks):
        for method in [m for m in args.methods.split(",") if m]:
            rows.append(
                run_baseline(
                    method,
                    task,
                    spec,
                    lrs,
                    args.steps,
                    args.epochs,
                    args.batch_size,
                    args.seed,
                    args.device,
                    args.rank,
                    args.alpha,
                    args.final,
                )
            )
            print(f"{rows[-1]['task']}/{method}: test {rows[-1]['test_acc']:.1f}%", flush=True)
    print_table(rows, COLUMNS)
    if not args.no_save:
        print(f"wrote {save('baselines', {'config': vars(args), 'rows': rows})}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
