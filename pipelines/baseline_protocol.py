"""The PEFT VTAB-1k protocol for the live baselines, each run through the training engine.

Each lr of the grid trains on train800 and is scored on val200, the grid growing past its
edge while the best lr sits there (:func:`extend_grid`); the best lr (ties: the smaller)
is retrained from the same initialisation on train800val200 for the
same number of epochs and scored once on test (``final='train800'`` instead retrains on
train800 and scores that run on test). Every run is ``losa_cache.train.train`` of a live
TrainConfig (AdamW, the trainer's warmup + cosine schedule, weight decay on matrices),
so it writes the same metrics and adapter as ``losa-cache train --live --method M``.
Training memory at batch 1 is one training step at batch 1 measured the way every
method's is (:func:`losa_cache.sweep.measure.step_memory`: the model's weights, gradients,
optimizer state and activations, the backbone's forward and backward included: the
paper's setting), not the run's process RSS, which reuses freed memory.

    from losa_cache.pipelines.baseline_protocol import run_baseline
    row = run_baseline("lora", "tasks/rotation", {"model": "demo"}, epochs=5)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from losa_cache.baselines.methods import list_baselines
from losa_cache.methods import get_method

__all__ = [
    "DEFAULT_LRS",
    "FINAL_SPLITS",
    "extend_grid",
    "run_baseline",
    "task_dirs",
    "train_memory",
]

#: Per-method lr grids (AdamW): full fine-tuning wants smaller steps than the PEFT methods.
DEFAULT_LRS = {"full": (1e-4, 3e-4, 1e-3), "lora": (3e-4, 1e-3, 3e-3),
               "bitfit": (1e-3, 3e-3, 1e-2), "vpt": (1e-3, 3e-3, 1e-2),
               "partial": (1e-4, 3e-4, 1e-3)}  # fmt: skip
FINAL_SPLITS = ("train800val200", "train800")
DEFAULT_EPOCHS = 100.0  # the usual VTAB-1k budget
WEIGHT_DECAY = 1e-4


def extend_grid(
    score: Callable[[float], float],
    scores: dict[float, float],
    max_extra: int = 3,
    ratio: float | None = None,
) -> float:
    """The best lr of ``scores`` (lr -> val accuracy; ties: the smaller lr), first growing
    the grid while the best sits at its edge: one step past that edge (``ratio``, default
    the grid's own spacing, else sqrt(10)) is scored by ``score`` and added; it stops when
    the new lr does not beat the old best strictly, or after ``max_extra`` extra lrs.
    ``scores`` is updated in place with every lr tried."""
    if not scores:
        raise ValueError("extend_grid needs at least one scored lr")
    lrs = sorted(scores)
    step = ratio or (lrs[1] / lrs[0] if len(lrs) > 1 else 10**0.5)
    best = max(lrs, key=lambda lr: scores[lr])  # max keeps the first (smallest) of equals
    for _ in range(max_extra):
        if best not in (min(scores), max(scores)):
            break
        new = best * step if best == max(scores) else best / step  # one lr: upwards
        scores[new] = score(new)
        if scores[new] <= scores[best]:  # no better past the edge: the old best stays
            break
        best = new
    return best


def _config(method: str, task_dir: Path, spec: dict[str, Any], out: Path, **kw: Any) -> Any:
    from losa_cache.train import TrainConfig

    return TrainConfig(
        live=True,
        store=None,
        method=method,
        out=str(out),
        dataset=f"vtab1k:{task_dir}",
        model=spec["model"],
        checkpoint=spec.get("checkpoint"),
        pretrained=spec.get("pretrained", False),
        random_init=spec.get("random_init", False),
        init_seed=spec.get("seed", 0),
        optimizer="adamw",
        weight_decay=WEIGHT_DECAY,
        amp="fp32",
        workers=0,
        **kw,
    )


def run_baseline(
    method: str,
    task_dir: str | Path,
    backbone_spec: dict[str, Any],
    lrs: Sequence[float] | None = None,
    steps: int | None = None,
    epochs: float = DEFAULT_EPOCHS,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    rank: int = 8,
    alpha: float | None = None,
    final: str = "train800val200",
    measure_memory: bool = True,
    out: str | Path | None = None,
    extend: int = 3,
    **options: Any,
) -> dict[str, Any]:
    """lr search on train800 -> val200, final run (see ``final``), test accuracy, costs.

    ``extend``: extra lrs past the grid's edge while the best sits there
    (:func:`extend_grid`; 0: the grid as given).
    ``out``: keep every run's folder (metrics, adapter) there; default a temporary folder.
    ``options``: baseline options (``prompt_tokens``, ``tune_blocks``, ``lora_targets``...).
    """
    from losa_cache.train import train

    if method not in list_baselines():
        raise ValueError(f"unknown live baseline {method!r}; choose one of {list_baselines()}")
    if final not in FINAL_SPLITS:
        raise ValueError(f"final must be one of {FINAL_SPLITS}, got {final!r}")
    t0 = time.perf_counter()
    task_dir = Path(task_dir)
    budget = {"steps": steps} if steps is not None else {"epochs": epochs}
    common = {"rank": rank, "lora_alpha": alpha, "seed": seed, "device": device, **options}
    with tempfile.TemporaryDirectory(prefix="losa-baseline-") as tmp:
        root = Path(out) if out is not None else Path(tmp)
        run = lambda name, **kw: train(
            _config(method, task_dir, backbone_spec, root / name, **common, **kw), progress=False
        )
        grid = tuple(lrs or DEFAULT_LRS[method])

        def score(lr: float) -> float:
            m = run(
                f"lr{lr:g}",
                lr=lr,
                batch_size=batch_size,
                train_split="train800",
                val_split="val200",
                test_split="none",
                **budget,
            )
            return 100.0 * m["final_val_acc"]

        val_acc = {lr: score(lr) for lr in grid}
        best = extend_grid(score, val_acc, extend)
        lrs = tuple(sorted(val_acc))
        res = run(
            "final",
            lr=best,
            batch_size=batch_size,
            train_split=final,
            val_split="none",
            test_split="test",
            **budget,
        )
        memory = (
            train_memory(
                _config(
                    method,
                    task_dir,
                    backbone_spec,
                    root / "final",
                    **common,
                    lr=best,
                    batch_size=1,
                    train_split=final,
                )
            )
            if measure_memory
            else None
        )
    return {
        "method": method,
        "task": task_dir.name,
        "task_dir": str(task_dir),
        "rank": rank if "rank" in get_method(method).uses else None,
        "lrs": list(lrs),
        "val_acc": {str(lr): v for lr, v in val_acc.items()},
        "best_lr": best,
        "val_acc_best": val_acc[best],
        "test_acc": 100.0 * res["test_acc"],
        "final": final,
        "learned_params": res["learned_params"],
        "head_params": res["head_params"],
        "images_per_s": res["images_per_s"],
        "memory_mb_bs1": memory[0] / 2**20 if memory else float("nan"),
        "memory_kind": memory[1] if memory else "not measured",
        "steps": res["step"],
        "batch_size": res["plan"]["batch_size"],
        "seed": seed,
        "train_loss": res["train_loss"],
        "wall_s": time.perf_counter() - t0,
        "device": res["device"],
    }


def train_memory(cfg: Any) -> tuple[int, str]:
    """(bytes, how measured) of one training step at ``cfg.batch_size`` of the live
    baseline ``cfg`` describes: its own backbone copy's weights, gradients, optimizer state
    and activations on images at the backbone's size, measured as a sweep measures every
    method (so full fine-tuning's exceeds its fp32 weights, and BitFit's)."""
    from losa_cache.baselines.methods import build_baseline
    from losa_cache.sweep.measure import image_inputs, step_memory
    from losa_cache.train.run import use_amp
    from losa_cache.train.sources import build_side_config, pick_device
    from losa_cache.train.trainer import open_source

    device = pick_device(cfg.device)
    source = open_source(cfg, device)
    try:
        side = build_side_config(cfg, source.info, len(source.task(cfg.task).classes))
        net = source.backbone.model
        return step_memory(
            lambda: build_baseline(cfg.method, net, side, cfg, cfg.seed),
            lambda b: image_inputs(net, side.num_classes, b, device),
            cfg.optimizer,
            cfg.batch_size,
            device,
            use_amp(cfg.amp, device),
        )
    finally:
        source.close()


def task_dirs(spec: str) -> list[Path]:
    """A task folder, a comma list of them, or a folder of task folders."""
    dirs = []
    for part in (p for p in spec.split(",") if p):
        path = Path(part)
        if (path / "train800.txt").is_file():
            dirs.append(path)
        else:
            dirs += sorted(d for d in path.iterdir() if (d / "train800.txt").is_file())
    if not dirs:
        raise FileNotFoundError(
            f"no VTAB-1k task folder (with train800.txt) in {spec!r}; "
            "make one with pipelines/vtab_tasks.py"
        )
    return dirs
