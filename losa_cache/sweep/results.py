"""Per-run results, ``results.csv`` / ``results.json``, and the best run per task.

One row per (config, task), from the run's own ``metrics.json`` (the same file ``train``
writes). Accuracy is the final model's (the one saved as the adapter; ``best_val_acc`` is
the best validation along the run's learning curve); the best config of a task is the one
with the highest validation accuracy (ties: fewer learned parameters, then fewer
inference FLOPs), exported as an adapter to ``DIR/best/<task>/``.

Costs, as the paper counts them and as this product runs: ``train_memory_b1`` /
``train_img_s`` from the store (no backbone), ``*_live`` with the frozen backbone's
forward in every step (the paper's setting; a live baseline's only setting, so both hold
the same measurement), ``infer_memory_b1`` / ``infer_img_s_b1`` a forward at batch 1
(backbone included), ``*_gmacs`` multiply-accumulates per image (the paper's "GFLOPs";
the ``*_gflops`` columns are 2x).

``bytes_read`` of a run: what the reads that fed it took from the store (its group's
stream and val/test reads, plus the shared feature cache): shared with every other run
of the group, not a per-run cost. The sweep's total is in the summary.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from losa_cache.baselines import copy_baseline_adapter
from losa_cache.methods import get_method
from losa_cache.outdir import (
    atomic_write,
    atomic_write_text,
    folder_name,
    read_json,
    remove_file,
    remove_tree,
    safe_subdir,
)
from losa_cache.side import SideConfig, head_params
from losa_cache.sweep.config import RunSpec, method_uses
from losa_cache.sweep.grouping import Profile

__all__ = [
    "CSV_COLUMNS",
    "RESULT",
    "best_runs",
    "export_best",
    "load_results",
    "run_row",
    "write_results",
]

RESULT = "result.json"
CSV_COLUMNS = [
    "task",
    "run",
    "method",
    "rank",
    "layers",
    "blocks",
    "lr",
    "lr_effective",
    "optimizer",
    "seed",
    "batch_size",
    "steps",
    "epochs",
    "status",
    "group",
    "val_acc",
    "test_acc",
    "val_loss",
    "test_loss",
    "best_val_acc",
    "train_loss",
    "learned_params",
    "head_params",
    "train_img_s",
    "train_img_s_live",
    "train_memory_b1",
    "train_memory_b1_live",
    "memory_kind",
    "train_memory_est",
    "infer_memory_b1",
    "infer_img_s_b1",
    "backbone_gmacs",
    "side_gmacs",
    "total_gmacs",
    "side_gflops",
    "backbone_gflops",
    "inference_gflops",
    "bytes_read",
    "best",
]


def run_row(
    spec: RunSpec, side: SideConfig, metrics: dict[str, Any], group: int, profile: Profile
) -> dict[str, Any]:
    """Everything reported about one run (JSON-safe), from its ``metrics.json``."""
    t, plan = spec.train, metrics["plan"]
    backbone = profile.backbone_flops
    return {
        "task": spec.task,
        "run": spec.id,
        "method": t.method,
        "rank": t.rank if "rank" in method_uses(t.method) else None,
        "options": {
            k: getattr(t, k)
            for k in method_uses(t.method)  # hidden, taps, ...
            if k not in ("rank", "layers") and hasattr(t, k)
        },
        "layers": spec.layers_label,
        "lr": t.lr,
        "blocks": list(range(side.num_layers))
        if get_method(t.method).live  # its own forward
        else list(side.required_layers),
        "lr_effective": plan["lr"],
        "optimizer": t.optimizer,
        "seed": t.seed,
        "batch_size": plan["batch_size"],
        "steps": plan["steps"],
        "epochs": plan["epochs"],
        "status": metrics["status"],
        "group": group,
        "step": metrics["step"],
        "val_acc": metrics["final_val_acc"],
        "test_acc": metrics["test_acc"],
        "val_loss": metrics["final_val_loss"],
        "test_loss": metrics["test_loss"],
        "best_val_acc": metrics["best_val_acc"],
        "train_loss": metrics["train_loss"],
        "learned_params": metrics["learned_params"],
        "head_params": head_params(side),
        "train_img_s": None,
        "train_img_s_live": None,
        "train_memory_b1": profile.memory_b1,
        "train_memory_b1_live": profile.memory_b1 if get_method(t.method).live else None,
        "memory_kind": profile.memory_kind,
        "train_memory_est": profile.memory_at(int(plan["batch_size"])),
        "infer_memory_b1": None,
        "infer_img_s_b1": None,
        "side_gmacs": profile.side_flops / 2e9,
        "backbone_gmacs": None if backbone is None else backbone / 2e9,
        "total_gmacs": None if backbone is None else (backbone + profile.side_flops) / 2e9,
        "side_gflops": profile.side_flops / 1e9,
        "backbone_gflops": None if backbone is None else backbone / 1e9,
        "inference_gflops": None if backbone is None else (backbone + profile.side_flops) / 1e9,
        "bytes_read": metrics["bytes_read"],
        "train_images": metrics["train_images"],
        "adapter": metrics.get("adapter") and str(Path(t.out)),
        "error": metrics["error"],
        "last_checkpoint": metrics.get("last_checkpoint"),
        "best": False,
    }


def best_runs(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """task -> the row with the best validation accuracy (trained runs only)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "trained" or r["val_acc"] is None:
            continue
        key = (r["val_acc"], -r["learned_params"], -(r["inference_gflops"] or 0))
        cur = best.get(r["task"])
        if cur is None or key > (
            cur["val_acc"],
            -cur["learned_params"],
            -(cur["inference_gflops"] or 0),
        ):
            best[r["task"]] = r
    return best


def export_best(out: Path, best: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Save each task's best run as an adapter in ``out/best/<task>/``."""
    from losa_cache.adapter import load_adapter, save_adapter

    paths = {}
    for task, row in best.items():
        dst = safe_subdir(out, "best", folder_name(task))  # never through a symlink
        _clear_export(dst)
        if get_method(row["method"]).live:  # its own format (+ peft's folder): copied as is
            paths[task] = str(copy_baseline_adapter(row["adapter"], dst))
            continue
        adapter = load_adapter(row["adapter"])
        meta = {
            "fingerprint": adapter.fingerprint,
            "classes": adapter.classes,
            "task": task,
            "train_config": adapter.meta.get("train_config"),
            "metrics": {**adapter.meta.get("metrics", {}), "sweep_best_of": str(out)},
        }
        paths[task] = str(save_adapter(dst, adapter.model, adapter.config, meta))
    return paths


def _clear_export(dst: Path) -> None:
    """Drop an earlier export of this sweep from ``dst`` before the new best is written.

    The best of a task can switch between a side network and a live baseline (or from LoRA
    to another baseline) on --resume; a peft folder left from the earlier best would then sit
    beside an adapter that does not use it. adapter.json (the commit marker) goes first.
    """
    from losa_cache.baselines.methods import PEFT_DIR

    remove_file(dst / "adapter.json")
    remove_tree(dst / PEFT_DIR)


def write_results(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """``results.json`` (summary + rows) and ``results.csv`` (one line per run)."""
    doc = {"summary": summary, "results": rows}
    atomic_write_text(
        out / "results.json", json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    )
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "blocks": ";".join(map(str, r["blocks"]))})
    atomic_write(
        out / "results.csv",
        lambda tmp: tmp.write_text(table.getvalue(), encoding="utf-8", newline=""),
    )


def load_results(path: str | Path) -> dict[str, Any]:
    """A sweep folder's ``results.json`` (clear error if the sweep has not finished)."""
    file = Path(path) / "results.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} holds no results.json: not a finished sweep (run "
            "`losa-cache sweep --out DIR`, or --resume it)"
        )
    return read_json(file, "rerun the sweep with --resume to write it again")
