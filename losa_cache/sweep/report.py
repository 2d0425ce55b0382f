"""``make_report``: accuracy against the paper's efficiency metrics, Pareto frontier marked.

As the LoSA paper's Fig. 4: accuracy against learned parameters, training memory (batch
1) and speed (from the store, and with the backbone forward: the paper's setting),
inference GMACs (the paper's "GFLOPs"), memory and speed at batch 1, with the points on
the Pareto frontier (no other point both more accurate and more efficient) circled in
shaded yellow. Several
sweep folders (``--compare``) share one plot per task and metric, one legend entry per
(folder, method); the frontier is over all of them. Accuracy is test accuracy where
the sweep has a test split, else validation accuracy. ``report.md`` holds the tables.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from losa_cache.outdir import (
    atomic_write,
    atomic_write_text,
    claim_outdir,
    folder_name,
    locked_outdir,
)
from losa_cache.sweep.results import load_results

__all__ = ["METRICS", "Metric", "base_lr", "make_report", "pareto"]


@dataclass(frozen=True)
class Metric:
    key: str  # column of results
    name: str  # file name part
    label: str  # axis label
    scale: float  # multiply the column by this for the axis
    lower_is_better: bool


REPORT_MD = "report.md"
METRICS = (
    Metric("learned_params", "params", "learned parameters (M, head excluded)", 1e-6, True),
    Metric("train_memory_b1", "memory", "training memory at batch 1, from the store (MB)",
           1e-6, True),
    Metric("train_img_s", "speed", "training speed from the store (images/s)", 1.0, False),
    Metric("total_gmacs", "gmacs", "inference GMACs per image (the paper's 'GFLOPs')", 1.0,
           True),
    Metric("train_memory_b1_live", "memory_live",
           "training memory at batch 1, backbone forward included (MB)", 1e-6, True),
    Metric("train_img_s_live", "speed_live",
           "training speed, backbone forward included (images/s)", 1.0, False),
    Metric("infer_memory_b1", "infer_memory", "inference memory at batch 1 (MB)", 1e-6, True),
    Metric("infer_img_s_b1", "infer_speed", "inference speed at batch 1 (images/s)", 1.0,
           False),
)
MARKERS = "osD^vP*Xph"


def pareto(xs: Sequence[float], accs: Sequence[float], lower_is_better: bool) -> list[bool]:
    """True where no other point is at least as good on both axes and better on one."""
    sign = 1 if lower_is_better else -1
    out = []
    for i, (x, a) in enumerate(zip(xs, accs, strict=True)):
        dominated = any(sign * x2 <= sign * x and a2 >= a and (sign * x2 < sign * x or a2 > a)
                        for j, (x2, a2) in enumerate(zip(xs, accs, strict=True)) if j != i)
        out.append(not dominated)
    return out


def _points(docs: dict[str, dict], task: str) -> list[dict[str, Any]]:
    rows = []
    for label, doc in docs.items():
        for r in doc["results"]:
            acc = r["test_acc"] if r["test_acc"] is not None else r["val_acc"]
            if r["task"] == task and r["status"] == "trained" and acc is not None:
                rows.append({**r, "sweep": label, "acc": acc})
    return rows


def base_lr(r: dict[str, Any]) -> str:
    """The lr as swept (before SGD's batch/512 scaling)."""
    return "default" if r["lr"] is None else f"{r['lr']:g}"


def _short(r: dict[str, Any]) -> str:
    """What sets this point apart: the fields its method uses (rank, layers) and the lr."""
    parts = [f"r{r['rank']}" if r["rank"] is not None else r["method"]]
    if r["layers"] != "-":
        parts.append(str(r["layers"]))
    return " ".join([*parts, f"lr{base_lr(r)}"])


def _styles(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """One colour + marker per (sweep, method), the same in every panel."""
    groups = sorted({(r["sweep"], r["method"]) for r in rows})
    many = len({s for s, _ in groups}) > 1
    return {g: {"marker": MARKERS[n % len(MARKERS)], "color": f"C{n % 10}",
                "label": f"{g[0]}: {g[1]}" if many else g[1]} for n, g in enumerate(groups)}


def _plot(ax: Any, rows: list[dict[str, Any]], metric: Metric, acc_label: str) -> list[bool]:
    """Scatter one metric on ``ax``; returns the frontier flags of ``rows``."""
    from matplotlib.ticker import MaxNLocator

    keep = [r for r in rows if r.get(metric.key) is not None]
    xs = [r[metric.key] * metric.scale for r in keep]
    front = pareto(xs, [r["acc"] for r in keep], metric.lower_is_better)
    for group, style in _styles(rows).items():
        pts = [(x, r["acc"]) for x, r in zip(xs, keep, strict=True)
               if (r["sweep"], r["method"]) == group]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=36, zorder=3, **style)
    best = sorted(((x, r["acc"], r) for x, r, f in zip(xs, keep, front, strict=True) if f),
                  key=lambda t: t[0])
    if best:
        bx, ba, _ = zip(*best, strict=True)
        ax.scatter(bx, ba, s=360, color="gold", alpha=0.35, edgecolors="orange", zorder=2,
                   label="Pareto frontier")
        ax.plot(bx, ba, color="orange", lw=1, ls="--", zorder=1)
        named: set[tuple[float, float]] = set()
        for x, a, r in best:
            if (x, a) not in named:  # the same point from several sweeps: one label
                named.add((x, a))
                ax.annotate(_short(r), (x, a), textcoords="offset points", xytext=(5, 5),
                            fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    _scale(ax, xs)
    ax.set_xlabel(metric.label + (" (higher is better)" if not metric.lower_is_better else ""))
    ax.set_ylabel(acc_label)
    ax.grid(alpha=0.3)
    flags = iter(front)
    return [next(flags) if r.get(metric.key) is not None else False for r in rows]


def _scale(ax: Any, xs: list[float]) -> None:
    positive = [x for x in xs if x > 0]
    if not positive or max(positive) / min(positive) < 20:
        return
    if len(positive) < len(xs):  # zeros (the linear probe's parameters): symlog
        ax.set_xscale("symlog", linthresh=min(positive))
    else:
        ax.set_xscale("log")


def make_report(dirs: Sequence[str | Path], out: str | Path | None = None,
                labels: Sequence[str] | None = None) -> dict[str, Any]:
    """PNGs per task and metric (+ a 2x4 overview) and ``report.md``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels or _labels(dirs))
    docs = {lab: load_results(d) for lab, d in zip(labels, dirs, strict=True)}
    dest = Path(out) if out is not None else Path(dirs[0]) / "report"
    with locked_outdir(dest, "report"):
        return _report(docs, dest, plt)


def _report(docs: dict[str, dict], dest: Path, plt: Any) -> dict[str, Any]:
    held = [n for n in _entries(dest) if n.endswith(".png")]
    claim_outdir(dest, "report", proof=(REPORT_MD,), known=(REPORT_MD, *held))
    tasks = sorted({r["task"] for doc in docs.values() for r in doc["results"]})
    pngs, tables, empty = [], [], {}
    for task in tasks:
        rows = _points(docs, task)
        if not rows:
            empty[task] = _why_empty(docs, task)
            continue
        acc_label = "test accuracy" if all(r["test_acc"] is not None for r in rows) else \
            "accuracy (val where no test)"
        flags = {}
        overview, axes = plt.subplots(2, len(METRICS) // 2, figsize=(24, 9))
        for metric, ax in zip(METRICS, axes.flat, strict=True):
            fig, one = plt.subplots(figsize=(6.5, 4.5))
            flags[metric.name] = _plot(one, rows, metric, acc_label)
            one.set_title(f"{task}: {acc_label} vs {metric.name}")
            one.legend(fontsize=7, loc="best")
            pngs.append(_save(fig, dest / f"{folder_name(task)}_acc_vs_{metric.name}.png", plt))
            _plot(ax, rows, metric, acc_label)
        axes.flat[0].legend(fontsize=7, loc="best")
        overview.suptitle(f"{task}: accuracy vs efficiency (Pareto frontier in yellow)")
        overview.tight_layout()
        pngs.append(_save(overview, dest / f"{folder_name(task)}_overview.png", plt))
        tables.append(_table(task, rows, flags))
    md = atomic_write_text(dest / REPORT_MD, _markdown(docs, tables, pngs, dest))
    return {"markdown": str(md), "pngs": [str(p) for p in pngs], "tasks": tasks,
            "not_drawn": empty}


def _why_empty(docs: dict[str, dict], task: str) -> str:
    """Why task ``task`` has no point to draw, and what gives it some."""
    rows = [r for doc in docs.values() for r in doc["results"] if r["task"] == task]
    if not any(r["status"] == "trained" for r in rows):
        return f"task {task!r}: no run finished training (rerun the sweep with --resume)"
    return (f"task {task!r}: no run has a val or test accuracy (the store has no val or test "
            "split): extract a store with `--split val=0.1,test=0.1` to hold them out of train")


def _labels(dirs: Sequence[str | Path]) -> list[str]:
    names = [Path(d).resolve().name for d in dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in dirs]


def _save(fig: Any, path: Path, plt: Any) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def _table(task: str, rows: list[dict[str, Any]], flags: dict[str, list[bool]]) -> str:
    head = ("| sweep | run | method | rank | layers | lr | val acc | test acc | params (M) | "
            "mem b1 (MB) | img/s | GMACs | mem b1 live (MB) | img/s live | infer mem b1 (MB) "
            "| infer img/s b1 | Pareto |\n" + "|---" * 17 + "|\n")
    order = sorted(range(len(rows)), key=lambda i: -(rows[i]["val_acc"] or 0))
    lines = []
    for i in order:
        r = rows[i]
        front = "".join(m[0].upper() for m in ("params", "memory", "speed", "gmacs")
                        if flags[m][i])
        lines.append(
            f"| {r['sweep']} | {r['run']}{' (best)' if r.get('best') else ''} | {r['method']} "
            f"| {_fmt(r['rank'], '')} | {r['layers']} | {base_lr(r)} "
            f"| {_fmt(r['val_acc'], '.4f')} | {_fmt(r['test_acc'], '.4f')} "
            f"| {r['learned_params'] / 1e6:.4f} | {_fmt(r['train_memory_b1'] / 1e6, '.2f')} "
            f"| {_fmt(r['train_img_s'], ',.0f')} | {_fmt(r.get('total_gmacs'), '.4f')} "
            f"| {_mb(r.get('train_memory_b1_live'))} | {_fmt(r.get('train_img_s_live'), ',.0f')} "
            f"| {_mb(r.get('infer_memory_b1'))} | {_fmt(r.get('infer_img_s_b1'), ',.1f')} "
            f"| {front or '-'} |")
    return f"## {task}\n\n" + head + "\n".join(lines) + "\n"


def _markdown(docs: dict[str, dict], tables: list[str], pngs: list[Path], dest: Path) -> str:
    parts = ["# Sweep report\n",
             "Pareto column: on the frontier for P(arams), M(emory), S(peed), G(MACs). "
             "Memory: one training step at batch 1 (the paper's convention); speed: training "
             "img/s on in-memory features, averaged over the timed batches; 'live': the "
             "same with the frozen backbone's forward in every step (the paper's setting; a "
             "live baseline's only one); infer: a forward at batch 1, backbone included. "
             "GMACs are what the paper's tables call GFLOPs (FLOPs = 2 x MACs).\n",
             "| sweep | runs | mode | groups | bytes read | train s | config-img/s |",
             "|---|---|---|---|---|---|---|"]
    for label, doc in docs.items():
        s = doc["summary"]
        parts.append(f"| {label} | {s['runs']} | {s['mode']} | {len(s['groups'])} "
                     f"| {s['bytes_read']:,} | {s['train_seconds']:.1f} "
                     f"| {_fmt(s['config_images_per_s'], ',.0f')} |")
    parts.append("")
    parts += tables
    parts += [f"![{p.stem}]({p.relative_to(dest)})" for p in pngs if "overview" in p.name]
    return "\n".join(parts) + "\n"
