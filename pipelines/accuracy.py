"""Accuracy *and* cost on real data: LoSA, its ablations and the live baselines (Tables 1, 3, 4, 6).

The LoSA paper's claim is a trade-off: near-LoRA / full fine-tuning accuracy at a fraction of
their training time and memory. This harness rebuilds that experiment at small scale on the
VTAB-1k-style tasks of ``pipelines/vtab_tasks.py`` (real MNIST / CIFAR-10 test images) with
the project's pretrained demo ViT, and writes a Table-1-like markdown table, a JSON record and
Pareto plots to ``benchmarks/results/``.

Protocol (the PEFT VTAB-1k one, for every method):

1. each lr of the method's grid trains on train800 and is scored on val200; while the best lr
   sits at an edge of its grid, the grid grows one step past that edge (up to ``EXTEND``
   extra lrs; ``losa_cache.pipelines.baseline_protocol.extend_grid``), so no number is capped by the
   grid;
2. the val-best lr is retrained from the same initialisation on train800val200 for the same
   number of epochs and scored once on test.

Cached methods (:data:`CACHED`: ``linear``; ``losa`` r = 4, 8, 16 on all blocks and r = 16
on ``evenly:3``; Table 3's ``lowrank_mlp`` and ``transformer``; Table 4's ``--taps attn |
mlp | attn+mlp``; Table 6's ``--start embed``) read one feature store per task, extracted
once with every block and the ``embed``, ``attn`` and ``mlp`` taps; step 1 is ONE sweep per
task (all configs x lrs in one pass), grid extensions are runs alone. Live baselines (all
five: ``full``, ``lora``, ``bitfit``, ``vpt``, ``partial``, on every task) come from
``losa_cache.baselines`` (every run the training engine's, ``train --live --method M``)
with their own lr grids. Budget rule: every method trains for the same number of epochs at
the same batch size (``--epochs``, default 5: what full fine-tuning can afford on 2 CPU
cores); ``--cached-epochs E`` adds cached rows at a longer budget (marked ``@E ep``).
The int8 rows (:data:`INT8`, marked ``int8``) train ``linear`` and ``losa r16`` again from
a second store per task holding the same blocks in int8 (one fp16 scale per token row): the
accuracy cost of halving the store, against the fp16 store's rows of the same names.

Augmented views (issue 24; ``--parts views,mild,fewshot``, pipelines/accuracy_views.py): LoSA
r16 and MIST from stores with V = 0, 4, 8 stored views (:data:`VIEW_COUNTS`,
:data:`AUGMENT`) and the few-shot rows (:data:`SHOTS` images per class, without and with
views), next to full fine-tuning live with the same augmentation, and the views rows
again with a milder augmentation that keeps more labels (:data:`MILD_AUGMENT`); each views row
records its store's extraction seconds and bytes; run ``accuracy-20261206-190217`` has the
first task (docs/benchmarks.md names the later runs).

Time, estimated (not run on this loaded CPU): the cached part is one sweep of 11 x 3 runs
per task (minutes); the live part ~2-4 min per method and task at 5 epochs, so 5 x 4 of
them are 40-80 min, plus any grid extensions: ``--live``/``--live-tasks`` choose fewer to
stay under an hour.

Wall time of a cached method = its task's extraction (a method alone would need it) + its
share of the sweep (sweep wall x its runs / all runs) + its extra lrs and final run. Memory
at batch 1: cached methods count the side network's training tensors (the backbone is not
loaded) and, as the paper counts it, with the backbone's weights and forward ("backbone
incl."); baselines a step through the whole backbone (their only setting).

    python -m losa_cache.pipelines.accuracy                       # default run (1 thread)
    python -m losa_cache.pipelines.accuracy --quick --out /tmp/q  # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losa_cache.versions import versions

REPO = Path(__file__).resolve().parents[1]

TASKS = ("digits", "rotation", "location", "count")
LIVE = ("full", "lora", "bitfit", "vpt", "partial")
#: Cached method name -> its sweep entry (method and the options it uses).
CACHED: dict[str, dict[str, Any]] = {
    "linear": {"method": "linear"},
    "losa r4": {"method": "losa", "rank": 4, "layers": "all"},
    "losa r8": {"method": "losa", "rank": 8, "layers": "all"},
    "losa r16": {"method": "losa", "rank": 16, "layers": "all"},
    "losa r16 evenly:3": {"method": "losa", "rank": 16, "layers": "evenly:3"},
    # Table 3, the adaptor function
    "lowrank_mlp r16": {"method": "lowrank_mlp", "rank": 16, "layers": "all"},
    "transformer h32": {"method": "transformer", "hidden": 32, "layers": "all"},
    # Table 4, which backbone activation feeds g_i (store taps attn, mlp)
    "losa r16 taps=attn": {"method": "losa", "rank": 16, "layers": "all", "taps": "attn"},
    "losa r16 taps=mlp": {"method": "losa", "rank": 16, "layers": "all", "taps": "mlp"},
    "losa r16 taps=attn+mlp": {"method": "losa", "rank": 16, "layers": "all", "taps": "attn+mlp"},
    # Table 6, the side network's start y_0 (store tap embed)
    "losa r16 start=embed": {"method": "losa", "rank": 16, "layers": "all", "start": "embed"},
    # MIST (its Table 3): LAE on G_k, k chosen on val among the thirds with the lr (each k
    # one sweep run, summed by the feed from embed + blocks); gather only; LAE only
    "mist": {"method": "mist"},
    "mist edge_blocks=0": {"method": "mist", "edge_blocks": 0},
    "mist gather=last": {"method": "mist", "gather": "last"},
}
#: What every task's store holds: all blocks, and the taps the Table 4 / 6 rows read.
STORE_TAPS = "blocks,embed,attn,mlp"
#: Issue 12's int8 rows: these methods again from a second store of the same blocks in int8
#: (one fp16 scale per token row), against the fp16 store's rows of the same names.
INT8: dict[str, dict[str, Any]] = {m: CACHED[m] for m in ("linear", "losa r16")}
#: Extra lrs past a grid's edge while the best sits there (losa_cache.pipelines.baseline_protocol).
EXTEND = 3
SPLITS = {"train": "train800", "val": "val200", "final": "train800val200", "test": "test"}
#: Issue 24's rows (pipelines/accuracy_views.py runs them; --parts views,fewshot): the
#: augmentation of MIST's few-shot runs, stored as V views per train image
AUGMENT = "rrc:0.08-1,flip"
VIEW_COUNTS = (0, 4, 8)  # V: "losa r16 V=4" ...; V = 0 is the plain store
VIEW_METHODS: dict[str, dict[str, Any]] = {m: CACHED[m] for m in ("losa r16", "mist")}
SHOTS = (1, 2, 4, 8, 16)  # MIST Fig. 4: images per class drawn from train800
FEW_SHOT_VIEWS = (0, 8)  # each shot count without and with views: "losa r16 4-shot V=8"
#: A milder augmentation next to AUGMENT (rows "losa r16 V=8 rrc:0.5-1"): no flip (a flip
#: turns a rotation of 90 deg into 270 deg, mirrors a digit, moves a location cell) and crops
#: that keep at least half the image. It keeps the label of digits and rotation; a crop still
#: moves location's object to another cell and can cut count's objects out.
MILD_AUGMENT = "rrc:0.5-1"
MILD_VIEW_COUNTS = (8,)
#: live full fine-tuning next to them, with the same augmentation (the same V views drawn)
LIVE_AUGMENTED = "full"


@dataclass
class Budget:
    """What the run may spend; written into every output."""

    epochs: float = 5.0  # every method, same batch size
    cached_epochs: float | None = None  # extra cached rows at this budget (None: none)
    batch_size: int = 64
    cached_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    cached_optimizer: str = "adamw"
    live_lrs: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "full": (3e-4, 1e-3),
            "lora": (1e-3, 3e-3),
            "bitfit": (3e-3, 1e-2),
            "vpt": (3e-3, 1e-2),
            "partial": (3e-4, 1e-3),
        }
    )
    live_tasks: tuple[str, ...] = TASKS  # every live baseline on every task
    lora_rank: int = 8
    extend: int = EXTEND  # extra lrs past a grid's edge while the best sits there
    speed_batches: int = 20  # timed batches per cached config (img/s, both settings)


QUICK = Budget(
    epochs=1.0,
    cached_epochs=2.0,
    batch_size=16,
    cached_lrs=(1e-3, 1e-2),
    live_lrs={
        "full": (1e-4,),
        "lora": (1e-3,),
        "bitfit": (1e-2,),
        "vpt": (1e-2,),
        "partial": (1e-4,),
    },
    extend=1,
    speed_batches=1,
)
QUICK_SIZES = {"train_size": 27, "val_size": 9, "test_size": 18}


# --------------------------------------------------------------------------- data


def prepare_tasks(root: Path, tasks: Sequence[str], data: Path, quick: bool) -> Path:
    """Generate the task folders unless ``root`` already holds them all."""
    from losa_cache.pipelines.vtab_tasks import build_tasks

    if all((root / t / "train800val200.txt").is_file() for t in tasks):
        return root
    build_tasks(root, data, tasks=list(tasks), **(QUICK_SIZES if quick else {}))
    return root


def extract_task(
    task_dir: Path,
    store: Path,
    spec: dict[str, Any],
    dtype: str = "float16",
    taps: str = STORE_TAPS,
) -> float:
    """One store per task, every block (the sweep picks layers); its extraction seconds
    (``spec["dask"]``, a DaskConfig: on that cluster)."""
    from losa_cache.api import extract
    from losa_cache.extract_config import ExtractConfig
    from losa_cache.store import open_store

    if store.exists():
        try:
            open_store(str(store)).require_complete()
            return float(
                json.loads((store.parent / f"{store.stem}.extract.json").read_text())["seconds"]
            )
        except Exception:
            shutil.rmtree(store)
    t0 = time.perf_counter()
    extract(
        ExtractConfig(
            model=spec["model"],
            checkpoint=spec.get("checkpoint"),
            random_init=spec.get("random_init", False),
            dataset=f"vtab1k:{task_dir}",
            store=str(store),
            layers="all",
            taps=taps,
            dtype=dtype,
            workers=0,
        ),
        progress=False,
        dask=spec.get("dask"),
    )
    seconds = time.perf_counter() - t0
    (store.parent / f"{store.stem}.extract.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


# --------------------------------------------------------------------------- cached methods


def sweep_entries(
    lrs: Sequence[float], methods: dict[str, dict[str, Any]] = CACHED
) -> list[dict[str, Any]]:
    """Every cached method x the lr grid, as sweep config entries."""
    return [{**entry, "lr": list(lrs)} for entry in methods.values()]


def method_name(
    side: str, rank: int | None, layers: str, options: dict[str, Any] | None = None
) -> str:
    """'linear', 'losa r8' (all blocks), 'losa r16 evenly:3', 'transformer h32', 'losa r16
    taps=attn': the fields the method uses, defaults left out."""
    from losa_cache.sweep.config import method_uses
    from losa_cache.train import TrainConfig

    uses = method_uses(side)
    parts = [side] + ([f"r{rank}"] if "rank" in uses else [])
    if "hidden" in uses:
        parts.append(f"h{(options or {}).get('hidden', TrainConfig.hidden)}")
    if "layers" in uses and layers != "all":
        parts.append(layers)
    for key in ("taps", "start", "edge_blocks", "gather", "block_fn"):
        value = (options or {}).get(key, getattr(TrainConfig, key))
        if key in uses and value != getattr(TrainConfig, key):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def entry_name(entry: dict[str, Any]) -> str:
    """The method name of a :data:`CACHED` entry."""
    return method_name(entry["method"], entry.get("rank"), entry.get("layers", "all"), entry)


def method_of(row: dict[str, Any]) -> str:
    """The method name of a sweep result row."""
    return method_name(row["method"], row["rank"], row["layers"], row.get("options"))


def _cached_config(
    store: Path,
    out: Path,
    row: dict[str, Any],
    budget: Budget,
    epochs: float,
    lr: float,
    final: bool,
    splits: dict[str, str] = SPLITS,
) -> Any:
    """A cached method's run alone (the row's method and options) at ``lr``: on train800 ->
    val200 (an extra lr of the grid), or the final run on train800val200 -> test."""
    from losa_cache.train import TrainConfig

    return TrainConfig(
        store=str(store),
        out=str(out),
        method=row["method"],
        rank=row["rank"] or TrainConfig.rank,
        layers=row["layers"] if row["layers"] != "-" else "store",  # "-": not used
        epochs=epochs,
        batch_size=budget.batch_size,
        optimizer=budget.cached_optimizer,
        lr=lr,
        workers=0,
        train_split=splits["final" if final else "train"],
        val_split="none" if final else splits["val"],
        test_split=splits["test"] if final else "none",
        **(row.get("options") or {}),
    )


def run_cached(
    store: Path,
    out: Path,
    budget: Budget,
    epochs: float,
    extract_s: float,
    methods: dict[str, dict[str, Any]] = CACHED,
    progress: bool = False,
    splits: dict[str, str] = SPLITS,
    dask: Any = None,
) -> dict[str, dict[str, Any]]:
    """One sweep on train800 -> val200 (each method's grid extended past its edge while its
    best lr sits there, by runs alone), then each method's val-best lr on train800val200;
    ``dask`` (a DaskConfig): the sweep's groups on that cluster."""
    from losa_cache.pipelines.baseline_protocol import extend_grid
    from losa_cache.sweep import SweepConfig, run_sweep
    from losa_cache.train import train

    t0 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)  # a half-done sweep: start it again
    rows = run_sweep(
        SweepConfig(
            store=str(store),
            out=str(out / "sweep"),
            configs=sweep_entries(budget.cached_lrs, methods),
            epochs=epochs,
            batch_size=budget.batch_size,
            optimizer=budget.cached_optimizer,
            workers=0,
            train_split=splits["train"],
            val_split=splits["val"],
            test_split=splits["test"],
            speed_batches=budget.speed_batches,
            cluster=dask.cluster if dask else None,
            scheduler=dask.scheduler if dask else None,
        ),
        progress=progress,
    )["results"]
    sweep_s = time.perf_counter() - t0
    results = {}
    for name in methods:
        mine = [r for r in rows if method_of(r) == name]
        folder = out / "final" / name.replace(" ", "_").replace(":", "").replace("=", "-")
        t1 = time.perf_counter()

        # rows of one name differ only in lr, or (mist) in lr and k: an lr scores its best k
        val = lambda r: -1.0 if r["val_acc"] is None else r["val_acc"]
        top = max(mine, key=val)

        def score(lr: float, row: dict[str, Any] = top, f: Path = folder) -> float:
            cfg = _cached_config(
                store, f.parent / f"{f.name}-lr{lr:g}", row, budget, epochs, lr, False, splits
            )
            return float(train(cfg, progress=progress)["final_val_acc"])

        scores = {r["lr"]: max(val(x) for x in mine if x["lr"] == r["lr"]) for r in mine}
        best_lr = extend_grid(score, scores, budget.extend)
        best = max((r for r in mine if r["lr"] == best_lr), key=val, default=top)  # its k
        final = train(
            _cached_config(store, folder, best, budget, epochs, best_lr, True, splits),
            progress=progress,
        )
        results[name] = {
            "lrs": {f"{lr:g}": acc for lr, acc in sorted(scores.items())},
            "best_lr": best_lr,
            "val_acc_best": 100 * scores[best_lr],
            "test_acc": 100 * final["test_acc"],
            "learned_params": best["learned_params"],
            "images_per_s": best["train_img_s"],
            "memory_mb_bs1": best["train_memory_b1"] / 2**20,
            "memory_kind": best["memory_kind"],
            **_paper_costs(best),
            "wall_s": extract_s + sweep_s * len(mine) / len(rows) + time.perf_counter() - t1,
            "inference_gflops": best["inference_gflops"],
            "epochs": epochs,
        }
    return results


def _paper_costs(row: dict[str, Any]) -> dict[str, Any]:
    """The paper's-setting columns of a sweep row (backbone forward included), in MiB."""
    mib = lambda v: None if v is None else v / 2**20
    return {
        "images_per_s_live": row.get("train_img_s_live"),
        "memory_mb_bs1_live": mib(row.get("train_memory_b1_live")),
        "infer_memory_mb_bs1": mib(row.get("infer_memory_b1")),
        "infer_images_per_s_bs1": row.get("infer_img_s_b1"),
        "total_gmacs": row.get("total_gmacs"),
    }


# --------------------------------------------------------------------------- live baselines


def run_live(
    task_dir: Path, spec: dict[str, Any], budget: Budget, methods: Sequence[str], **options: Any
) -> dict[str, dict[str, Any]]:
    """Live baselines (full, lora, bitfit, vpt, partial) with their own lr grids, the same
    epochs and batch size; each run is the training engine's (losa_cache.baselines).
    ``options``: TrainConfig fields for every run (e.g. ``views``/``augment``)."""
    from losa_cache.pipelines.baseline_protocol import run_baseline

    out = {}
    for method in methods:
        r = run_baseline(
            method,
            task_dir,
            spec,
            budget.live_lrs.get(method),  # None: the method's default grid
            None,
            budget.epochs,
            budget.batch_size,
            0,
            "cpu",
            budget.lora_rank,
            extend=budget.extend,
            **options,
        )
        out[method if method != "lora" else f"lora r{budget.lora_rank}"] = {
            k: r[k]
            for k in (
                "best_lr",
                "val_acc_best",
                "test_acc",
                "learned_params",
                "images_per_s",
                "memory_mb_bs1",
                "memory_kind",
                "wall_s",
            )
        } | {
            "lrs": r["val_acc"],
            "epochs": budget.epochs,
            # the backbone runs in every step: the paper's setting is a baseline's only one
            "images_per_s_live": r["images_per_s"],
            "memory_mb_bs1_live": r["memory_mb_bs1"],
        }
        print(
            f"  {task_dir.name}/{method}: test {r['test_acc']:.1f}% ({r['wall_s']:.0f} s)",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- table


def summarise(
    per_task: dict[str, dict[str, dict[str, Any]]], tasks: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per method: test acc per task, average, efficiency (medians over tasks)."""
    methods = list(dict.fromkeys(m for t in tasks for m in per_task.get(t, {})))
    common = [t for t in tasks if all(m in per_task.get(t, {}) for m in methods)]
    rows = []
    for m in methods:
        cells = {t: per_task[t][m] for t in tasks if m in per_task.get(t, {})}
        accs = {t: c["test_acc"] for t, c in cells.items()}
        first = next(iter(cells.values()))
        rows.append(
            {
                "method": m,
                "acc": accs,
                "average": sum(accs.values()) / len(accs) if len(accs) == len(tasks) else None,
                "common": _mean([accs[t] for t in common]),
                "common_tasks": common,
                "learned_params": first["learned_params"],
                "images_per_s": _median([c["images_per_s"] for c in cells.values()]),
                "memory_mb_bs1": _median([c["memory_mb_bs1"] for c in cells.values()]),
                "images_per_s_live": _median([c.get("images_per_s_live") for c in cells.values()]),
                "memory_mb_bs1_live": _median(
                    [c.get("memory_mb_bs1_live") for c in cells.values()]
                ),
                "wall_s": sum(c["wall_s"] for c in cells.values()),
                "best_lr": {t: c["best_lr"] for t, c in cells.items()},
                "live": m.split()[0] in LIVE,
            }
        )
    return rows


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else float("nan")


def markdown(
    rows: list[dict[str, Any]], tasks: Sequence[str], budget: Budget, notes: Sequence[str]
) -> str:
    """The Table 1 layout: methods x tasks + average, then the efficiency columns."""
    common = "+".join(rows[0]["common_tasks"]) if rows else ""
    head = [
        "method",
        *tasks,
        "average",
        f"avg {common}",
        "learned params",
        "train img/s",
        "train mem b1 (MB)",
        "train img/s, backbone incl.",
        "train mem b1, backbone incl. (MB)",
        "wall s (all tasks)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [
            r["method"],
            *[_pct(r["acc"].get(t)) for t in tasks],
            _pct(r["average"]),
            _pct(r["common"]),
            f"{r['learned_params']:,}",
            f"{r['images_per_s']:,.0f}",
            f"{r['memory_mb_bs1']:.2f}",
            f"{r['images_per_s_live']:,.0f}",
            f"{r['memory_mb_bs1_live']:.2f}",
            f"{r['wall_s']:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(
        [
            "# Accuracy: LoSA vs linear probing vs live fine-tuning (small VTAB-1k-style)\n",
            "Val-selected test accuracy (%), protocol: lr search train800 -> val200, the best lr "
            "retrained on train800val200, scored on test (2,000 images per task).\n",
            *lines,
            "",
            "## Budget",
            "",
            "```",
            json.dumps(_budget_doc(budget), indent=1),
            "```",
            "",
            "## Notes",
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _budget_doc(budget: Budget) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(budget).items()}


#: The figure's panels: (row key, axis label, lower is better, scale to the axis unit).
#: Every cost includes the backbone (the paper's setting, a live baseline's only one), so
#: cached side networks and live baselines sit on the same axes.
FIGURE_METRICS = (
    ("learned_params", "Learned parameters (head excluded)", True, 1.0),
    (
        "memory_mb_bs1_live",
        "Training memory with the backbone (MB, batch 1)",
        True,
        2**20 / 1e6,
    ),  # the rows hold MiB
    ("images_per_s_live", "Training speed with the backbone (images/s)", False, 1.0),
)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Mean test accuracy (%) against learned parameters, training memory and training
    speed, each with the backbone: every point named, one colour and marker per method
    (losa_cache.sweep.plotting, as in `losa-cache report`), hollow for live baselines,
    the Pareto frontier haloed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from losa_cache.sweep.plotting import method_family, method_style, place_labels, readable_axis
    from losa_cache.sweep.report import pareto

    pts = [r for r in rows if r["common"] is not None]
    acc = [r["common"] for r in pts]
    tasks = ", ".join(pts[0]["common_tasks"]) if pts else ""
    fig, axes = plt.subplots(1, len(FIGURE_METRICS), figsize=(21, 7.5))
    for ax, (key, label, lower, scale) in zip(axes, FIGURE_METRICS, strict=True):
        keep = [
            (r[key] * scale, a, r)
            for r, a in zip(pts, acc, strict=True)
            if r.get(key) is not None and r[key] == r[key]
        ]  # NaN: not measured
        xs = [x for x, _, _ in keep]
        front = pareto(xs, [a for _, a, _ in keep], lower)
        for x, a, r in keep:
            ax.plot(
                x,
                a,
                ls="",
                markersize=8,
                zorder=3,
                alpha=0.9,
                fillstyle="none" if r["live"] else "full",
                markeredgewidth=1.6,
                **method_style(r["method"]),
            )
        best = sorted((x, a) for (x, a, _), f in zip(keep, front, strict=True) if f)
        if best:
            ax.scatter(
                *zip(*best, strict=True),
                s=330,
                color="gold",
                alpha=0.35,
                edgecolors="orange",
                zorder=2,
            )
            ax.plot(*zip(*best, strict=True), color="orange", lw=1, ls="--", zorder=1)
        readable_axis(ax, xs)
        ax.set_xlabel(label + (" - lower is better" if lower else " - higher is better"))
        ax.set_ylabel(f"Test accuracy (%), mean over {tasks}")
        ax.set_title(label.split(" (")[0], fontsize=12)
        ax.grid(alpha=0.3)
        place_labels(ax, [(x, a, r["method"]) for x, a, r in keep], fontsize=7.5)
    families = list(dict.fromkeys(method_family(r["method"]) for r in pts))
    handles = [
        Line2D(
            [],
            [],
            ls="",
            markersize=8,
            label=f,
            markeredgewidth=1.6,
            fillstyle="none"
            if any(r["live"] for r in pts if method_family(r["method"]) == f)
            else "full",
            **method_style(f),
        )
        for f in families
    ]
    handles.append(
        Line2D(
            [],
            [],
            ls="--",
            color="orange",
            marker="o",
            markersize=13,
            markerfacecolor="gold",
            alpha=0.6,
            label="Pareto frontier",
        )
    )
    fig.legend(
        handles=handles,
        loc="center right",
        fontsize=9,
        title="filled: cached side network\nhollow: live baseline",
        title_fontsize=9,
    )
    fig.suptitle(
        "Accuracy vs cost: cached side networks (features from the store) and live "
        "baselines (fine-tuning the backbone); every cost counts the backbone's "
        "forward, as the LoSA paper does",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/accuracy", help="work folder: tasks, stores, runs")
    p.add_argument("--tasks-dir", default=None, help="existing task folders (default: OUT/tasks)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--model", default="demo")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--epochs", type=float, default=None, help="every method (default 5)")
    p.add_argument(
        "--cached-epochs",
        type=float,
        default=None,
        help="extra cached rows at this budget (default: none)",
    )
    p.add_argument("--live-tasks", default=None, help="tasks for the live baselines (default: all)")
    p.add_argument(
        "--live",
        default=",".join(LIVE),
        help="live baselines to run, of full,lora,bitfit,vpt,partial ('' for none)",
    )
    p.add_argument(
        "--parts",
        default="cached,live,views,mild,fewshot",
        help="cached,live,views,mild,fewshot (results are reused; mild: the views rows "
        "with the milder augmentation)",
    )
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--no-save", action="store_true", help="no files under --results")
    p.add_argument("--quick", action="store_true", help="tiny tasks and budgets (smoke test)")
    add_dask_args(p, "the cached part's")
    p.add_argument(
        "--tabulate",
        action="store_true",
        help="no training or extraction: the table and figures of the results already "
        "saved in --out (parts not finished are left out), e.g. while a run goes on",
    )
    p.add_argument(
        "--redraw",
        default=None,
        metavar="RUN.json",
        help="no training: an earlier run's JSON with the live baselines' training memory "
        "measured again (batch 1, the way every method's is), written as a new dated run",
    )
    return p.parse_args(argv)


def add_dask_args(p: argparse.ArgumentParser, what: str) -> None:
    """A recipe's ``--cluster``/``--scheduler`` (extract's and sweep's, for ``what``'s
    extractions and sweeps); :func:`dask_config` reads them."""
    dask = p.add_mutually_exclusive_group()
    dask.add_argument(
        "--cluster",
        default=None,
        help=f"{what} extraction and sweeps on "
        "Dask: local:N | cuda (extract's and sweep's --cluster)",
    )
    dask.add_argument(
        "--scheduler",
        default=None,
        help="an existing Dask cluster: tcp://HOST:PORT (the folders must be shared)",
    )


def dask_config(args: argparse.Namespace) -> Any:
    """``--cluster``/``--scheduler`` as extract's DaskConfig (None: in this process)."""
    if not (args.cluster or args.scheduler):
        return None
    from losa_cache.extract_config import DaskConfig

    return DaskConfig(cluster=args.cluster, scheduler=args.scheduler)


def make_budget(args: argparse.Namespace) -> Budget:
    budget = Budget(**vars(QUICK)) if args.quick else Budget()
    if args.epochs is not None:
        budget.epochs = args.epochs
    if args.cached_epochs is not None:
        budget.cached_epochs = args.cached_epochs or None
    if args.live_tasks is not None:
        budget.live_tasks = tuple(t for t in args.live_tasks.split(",") if t)
    return budget


def memo(path: Path, compute: Any) -> dict[str, Any]:
    """``compute()``'s result, saved to ``path`` and reused: the run resumes part by part."""
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def saved_only(path: Path, compute: Any) -> dict[str, Any]:
    """``--tabulate``'s :func:`memo`: the saved result, or nothing (never computes)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Tasks -> stores -> cached methods -> live baselines -> rows (nothing written)."""
    out, budget = Path(args.out), make_budget(args)
    tasks = [t for t in args.tasks.split(",") if t]
    spec = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "random_init": args.random_init,
        "seed": 0,
        "dask": dask_config(args),
    }
    root = prepare_tasks(Path(args.tasks_dir or out / "tasks"), tasks, Path(args.data), args.quick)
    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    live = [m for m in args.live.split(",") if m]
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    keep = saved_only if args.tabulate else memo
    for task in tasks if "cached" in parts else ():
        store = out / "stores" / f"{task}.zarr"
        store.parent.mkdir(parents=True, exist_ok=True)
        per_task[task] = {}
        for epochs, tag in ((budget.epochs, ""), (budget.cached_epochs, " @{:g} ep")):
            if epochs:
                runs = out / "runs" / task / f"e{epochs:g}"
                done = keep(
                    out / "results" / task / f"cached-e{epochs:g}.json",
                    lambda s=store, r=runs, e=epochs, t=task: run_cached(
                        s, r, budget, e, extract_task(root / t, s, spec), dask=spec["dask"]
                    ),
                )
                per_task[task] |= {m + tag.format(epochs): v for m, v in done.items()}
        int8 = out / "stores" / f"{task}-int8.zarr"
        done = keep(
            out / "results" / task / f"cached-int8-e{budget.epochs:g}.json",
            lambda s=int8, t=task: run_cached(
                s, out / "runs" / t / "int8", budget, budget.epochs,
                extract_task(root / t, s, spec, dtype="int8", taps="blocks"), INT8,
                dask=spec["dask"],
            ),
        )  # fmt: skip
        per_task[task] |= {f"{m} int8": v for m, v in done.items()}
        print(f"{task}: cached done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if parts & {"views", "mild", "fewshot"}:
        from losa_cache.pipelines.accuracy_views import views_part

        for task in tasks:
            per_task.setdefault(task, {}).update(
                views_part(root / task, out, spec, budget, parts, keep)
            )
    for task in tasks if "live" in parts else ():
        for method in live if task in budget.live_tasks else ():
            per_task.setdefault(task, {}).update(
                keep(
                    out / "results" / task / f"{method}-e{budget.epochs:g}.json",
                    lambda m=method, t=task: run_live(root / t, spec, budget, [m]),
                )
            )
    rows = summarise(per_task, tasks)
    return {
        "tasks": tasks,
        "classes": {t: n_classes(root / t) for t in tasks},
        "budget": _budget_doc(budget),
        "per_task": per_task,
        "rows": rows,
        "backbone": {k: v for k, v in spec.items() if k != "dask"},
        "total_wall_s": time.perf_counter() - t0,
    }


def n_classes(task_dir: Path) -> int:
    """A VTAB-layout task's class count (its classnames.txt, else its labels)."""
    names = task_dir / "classnames.txt"
    if names.is_file():
        return len([n for n in names.read_text().splitlines() if n.strip()])
    lines = (task_dir / "train800val200.txt").read_text().splitlines()
    return len({ln.rsplit(maxsplit=1)[1] for ln in lines if ln.strip()})


def figures(doc: dict[str, Any], results: Path, run_id: str) -> dict[str, Path]:
    """The run's figures, by caption: accuracy vs cost for the harness's method rows,
    accuracy vs stored views and vs shots per class for issue 24's rows (each only where
    the run has such rows; pipelines/accuracy_plots.py)."""
    from losa_cache.pipelines.accuracy_plots import kinds, plot_shots, plot_views

    kind = kinds(doc["per_task"])
    cost_rows = [r for r in doc["rows"] if kind.get(r["method"], "cost") == "cost"]
    made = {"accuracy vs cost": plot(cost_rows, results / f"{run_id}.png") if cost_rows else None}
    args = (doc["per_task"], doc["tasks"])
    classes = doc.get("classes")
    made["accuracy vs stored views"] = plot_views(*args, results / f"{run_id}-views.png", run_id,
                                                  classes)  # fmt: skip
    made["accuracy vs shots per class"] = plot_shots(*args, results / f"{run_id}-shots.png",
                                                     run_id, classes)  # fmt: skip
    return {caption: path for caption, path in made.items() if path is not None}


def write_outputs(doc: dict[str, Any], results: Path, notes: Sequence[str]) -> dict[str, str]:
    """benchmarks/results/accuracy-<date>.{md,json} and its figures (.png, -views.png,
    -shots.png where the run has such rows); the JSON has date, versions, device."""
    budget = Budget(**_budget_args(doc["budget"]))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    pngs = figures(doc, results, f"accuracy-{stamp}")
    md = results / f"accuracy-{stamp}.md"
    md.write_text(
        markdown(doc["rows"], doc["tasks"], budget, notes)
        + "".join(f"\n![{caption}]({p.name})\n" for caption, p in pngs.items())
    )
    js = results / f"accuracy-{stamp}.json"
    js.write_text(
        json.dumps(
            {
                "benchmark": "accuracy",
                "date": stamp,
                "device": _device(),
                "versions": versions(),
                **doc,
                "markdown": md.name,
                "png": next(iter(pngs.values())).name if pngs else None,
                "figures": {caption: p.name for caption, p in pngs.items()},
            },
            indent=2,
            sort_keys=True,
            default=str,
        )
    )
    return {"markdown": str(md), "json": str(js), **{c: str(p) for c, p in pngs.items()}}


def _device() -> dict[str, Any]:
    import platform

    import torch

    if torch.cuda.is_available():
        return {"kind": "cuda", "name": torch.cuda.get_device_properties(0).name}
    return {
        "kind": "cpu",
        "name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


DEFAULT_NOTES = (
    "Cached wall time = the task's extraction + the method's share of one sweep + its final "
    "run; summed over tasks. Live wall time = lr search + final run + memory probe.",
    "img/s and memory: medians over tasks. Cached memory = side-network training tensors at "
    "batch 1 (backbone not needed); 'backbone incl.' adds the frozen backbone's weights and "
    "forward (the paper's setting); live = a batch-1 step through the whole backbone "
    "(weights, activations, gradients, optimizer state).",
    "lr grids grow past their edge while the best lr sits there (up to 3 extra lrs).",
)


def remeasure_live_memory(doc: dict[str, Any], root: Path) -> dict[str, Any]:
    """``doc`` (a run's JSON) with every live baseline's training memory at batch 1 measured
    again by :func:`losa_cache.pipelines.baseline_protocol.train_memory` (weights, gradients, AdamW
    state, activations: as every cached method's), on the task folders in ``root`` (the
    class count is all a task changes); accuracies and every other number are kept."""
    from losa_cache.pipelines.baseline_protocol import _config, train_memory

    per_task = json.loads(json.dumps(doc["per_task"]))
    rank = int(doc["budget"]["lora_rank"])
    common = {"rank": rank, "lora_alpha": None, "seed": 0, "device": "cpu", "batch_size": 1}
    for task, cells in per_task.items():
        for name, cell in cells.items():
            method = name.split()[0]
            if method not in LIVE:
                continue
            cfg = _config(method, root / task, doc["backbone"], root / "unused", **common)
            nbytes, kind = train_memory(cfg)
            cell.update(
                memory_mb_bs1=nbytes / 2**20, memory_mb_bs1_live=nbytes / 2**20, memory_kind=kind
            )
            print(f"  {task}/{name}: {nbytes / 1e6:.2f} MB ({kind})", flush=True)
    order = [r["method"] for r in doc["rows"]]  # the run's row order (JSON sorted its keys)
    rows = sorted(summarise(per_task, doc["tasks"]), key=lambda r: order.index(r["method"]))
    return {**doc, "per_task": per_task, "rows": rows}


def redraw(args: argparse.Namespace) -> dict[str, Any]:
    """``--redraw RUN.json``: the run's accuracies, its live baselines' memory re-measured."""
    source = Path(args.redraw)
    old = json.loads(source.read_text())
    root = prepare_tasks(Path(args.tasks_dir or Path(args.out) / "tasks"), old["tasks"],
                         Path(args.data), quick=True)  # fmt: skip
    keep = ("tasks", "budget", "per_task", "rows", "backbone", "total_wall_s")
    doc = remeasure_live_memory({k: old[k] for k in keep}, root)
    doc["remeasured"] = {
        "accuracy_from": source.name,
        "what": "live baselines' training memory at batch 1 (memory_mb_bs1, "
        "memory_mb_bs1_live), measured as every cached method's; every other number is "
        f"{source.name}'s",
    }
    notes = (*DEFAULT_NOTES, f"Accuracies, speeds and the cached rows' memory: {source.name}; "
             "the live baselines' training memory re-measured (one batch-1 step: weights, "
             "gradients, AdamW state, activations; the old run measured the process's RSS "
             "growth, which reused freed memory).")  # fmt: skip
    print(markdown(doc["rows"], doc["tasks"], Budget(**_budget_args(doc["budget"])), ()))
    if not args.no_save:
        doc["paths"] = write_outputs(doc, Path(args.results), notes)
        print("\n".join(f"wrote {p}" for p in doc["paths"].values()))
    return doc


def _budget_args(budget: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in budget.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.redraw:
        return redraw(args)
    doc = run(args)
    print(markdown(doc["rows"], doc["tasks"], make_budget(args), ()))
    if not args.no_save:
        paths = write_outputs(doc, Path(args.results), DEFAULT_NOTES)
        print("\n".join(f"wrote {p}" for p in paths.values()))
        doc["paths"] = paths
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
