"""``make_report``: accuracy against the paper's efficiency metrics, Pareto frontier marked.

As the LoSA paper's Fig. 4: accuracy (%) against learned parameters, training memory
(batch 1) and speed (from the store, and with the backbone forward: the paper's setting),
inference compute (GMACs, the paper's "GFLOPs"), memory and speed at batch 1, with the
points on the Pareto frontier (no other point both more accurate and cheaper) haloed in
yellow. Every point has its method's colour and marker (the same in every figure:
:mod:`losa_cache.sweep.plotting`) and a label that collides with no other; several sweep
folders (``--compare``) share one plot per task and metric, a sweep told apart by the
marker's fill; the frontier is over all of them. Accuracy is test accuracy where the
sweep has a test split, else validation accuracy. ``report.md`` holds the tables.
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
    label: str  # axis label: plain words and the unit
    scale: float  # multiply the column by this for the axis
    lower_is_better: bool

    @property
    def title(self) -> str:
        """The label without its unit, for a title: "training memory with the backbone"."""
        return self.label.split(" (")[0].lower()

    @property
    def axis(self) -> str:
        return self.label + (
            " - lower is better" if self.lower_is_better else " - higher is better"
        )


REPORT_MD = "report.md"
METRICS = (
    Metric("learned_params", "params", "Learned parameters (head excluded)", 1.0, True),
    Metric("train_memory_b1", "memory", "Training memory from the store (MB, batch 1)", 1e-6, True),
    Metric("train_img_s", "speed", "Training speed from the store (images/s)", 1.0, False),
    Metric("total_gmacs", "gmacs", "Inference compute (GMACs per image)", 1.0, True),
    Metric(
        "train_memory_b1_live",
        "memory_live",
        "Training memory with the backbone (MB, batch 1)",
        1e-6,
        True,
    ),
    Metric(
        "train_img_s_live", "speed_live", "Training speed with the backbone (images/s)", 1.0, False
    ),
    Metric("infer_memory_b1", "infer_memory", "Inference memory (MB, batch 1)", 1e-6, True),
    Metric("infer_img_s_b1", "infer_speed", "Inference speed (images/s, batch 1)", 1.0, False),
)
#: Several sweeps on one plot: the same method colour and marker, filled for the first
#: sweep, hollow for the second, half-filled after.
FILLS = ("full", "none", "left", "bottom", "right", "top")


def pareto(xs: Sequence[float], accs: Sequence[float], lower_is_better: bool) -> list[bool]:
    """True where no other point is at least as good on both axes and better on one."""
    sign = 1 if lower_is_better else -1
    out = []
    for i, (x, a) in enumerate(zip(xs, accs, strict=True)):
        dominated = any(
            sign * x2 <= sign * x and a2 >= a and (sign * x2 < sign * x or a2 > a)
            for j, (x2, a2) in enumerate(zip(xs, accs, strict=True))
            if j != i
        )
        out.append(not dominated)
    return out


def _points(docs: dict[str, dict], task: str) -> list[dict[str, Any]]:
    rows = []
    for label, doc in docs.items():
        for r in doc["results"]:
            acc = r["test_acc"] if r["test_acc"] is not None else r["val_acc"]
            if r["task"] == task and r["status"] == "trained" and acc is not None:
                rows.append({**r, "sweep": label, "acc": acc, "many": len(docs) > 1})
    return rows


def base_lr(r: dict[str, Any]) -> str:
    """The lr as swept (before SGD's batch/512 scaling)."""
    return "default" if r["lr"] is None else f"{r['lr']:g}"


def _short(r: dict[str, Any]) -> str:
    """What sets this point apart: its method and the fields it uses (rank, layers), the
    lr, and its sweep where several are compared."""
    parts = [r["method"]]
    if r["rank"] is not None:
        parts.append(f"r{r['rank']}")
    if r["layers"] != "-":
        parts.append(str(r["layers"]))
    parts.append(f"lr {base_lr(r)}")
    return " ".join(parts) + (f" [{r['sweep']}]" if r.get("many") else "")


def _join(names: list[str]) -> str:
    """Names of points at one spot, compacted: runs differing only in lr or sweep share a
    line (``losa r16 all lr 0.01, 0.05 [a, b]``)."""
    import re

    lines: dict[str, tuple[list[str], list[str]]] = {}
    for name in names:
        m = re.fullmatch(r"(.*) lr (\S+)(?: \[(.+)\])?", name)
        if m is None:
            lines.setdefault(name, ([], []))
            continue
        lrs, sweeps = lines.setdefault(m[1], ([], []))
        for seen, v in ((lrs, m[2]), (sweeps, m[3])):
            if v is not None and v not in seen:
                seen.append(v)
    return "\n".join(
        f"{base}"
        + (f" lr {', '.join(lrs)}" if lrs else "")
        + (f" [{', '.join(sweeps)}]" if sweeps else "")
        for base, (lrs, sweeps) in lines.items()
    )


def _plot(
    ax: Any,
    rows: list[dict[str, Any]],
    metric: Metric,
    acc_label: str,
    sweeps: list[str],
    label_all: bool = True,
) -> list[bool]:
    """One metric on ``ax``: every point in its method's colour and marker (filled per
    sweep), the Pareto frontier haloed, labels that do not collide (``label_all``: every
    point, else the frontier's); returns the frontier flags of ``rows``."""
    from losa_cache.sweep.plotting import method_style, place_labels, readable_axis

    keep = [r for r in rows if r.get(metric.key) is not None]
    if not keep:
        ax.text(
            0.5,
            0.5,
            "not measured in this sweep",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )
    xs = [r[metric.key] * metric.scale for r in keep]
    accs = [100 * r["acc"] for r in keep]
    front = pareto(xs, accs, metric.lower_is_better)
    for x, a, r in zip(xs, accs, keep, strict=True):
        ax.plot(
            x,
            a,
            ls="",
            markersize=7,
            zorder=3,
            alpha=0.9,
            fillstyle=FILLS[sweeps.index(r["sweep"]) % len(FILLS)],
            **method_style(r["method"]),
        )
    best = sorted(((x, a) for x, a, f in zip(xs, accs, front, strict=True) if f))
    if best:
        bx, ba = zip(*best, strict=True)
        ax.scatter(bx, ba, s=300, color="gold", alpha=0.35, edgecolors="orange", zorder=2)
        ax.plot(bx, ba, color="orange", lw=1, ls="--", zorder=1)
    readable_axis(ax, xs)
    readable_axis(ax, accs, "y")
    ax.set_xlabel(metric.axis, fontsize=9)
    ax.set_ylabel(acc_label, fontsize=9)
    ax.grid(alpha=0.3, which="major")
    place_labels(
        ax,
        [
            (x, a, _short(r))
            for x, a, r, f in zip(xs, accs, keep, front, strict=True)
            if label_all or f
        ],
        join=_join,
    )
    flags = iter(front)
    return [next(flags) if r.get(metric.key) is not None else False for r in rows]


def _legend(where: Any, rows: list[dict[str, Any]], sweeps: list[str], **kw: Any) -> None:
    """Methods by colour and marker, sweeps by fill (when several), the frontier's halo."""
    from matplotlib.lines import Line2D

    from losa_cache.sweep.plotting import method_style

    handles = [
        Line2D([], [], ls="", markersize=7, label=m, **method_style(m))
        for m in sorted({r["method"] for r in rows})
    ]
    if len(sweeps) > 1:
        handles += [
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                color="0.3",
                markersize=7,
                fillstyle=FILLS[i % len(FILLS)],
                label=f"sweep {s}",
            )
            for i, s in enumerate(sweeps)
        ]
    handles.append(
        Line2D(
            [],
            [],
            ls="--",
            color="orange",
            marker="o",
            markersize=12,
            markerfacecolor="gold",
            alpha=0.6,
            label="Pareto frontier",
        )
    )
    where.legend(handles=handles, fontsize=8, **kw)


def make_report(
    dirs: Sequence[str | Path], out: str | Path | None = None, labels: Sequence[str] | None = None
) -> dict[str, Any]:
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
    sweeps = list(docs)
    for task in tasks:
        rows = _points(docs, task)
        if not rows:
            empty[task] = _why_empty(docs, task)
            continue
        acc_label = (
            "Test accuracy (%)"
            if all(r["test_acc"] is not None for r in rows)
            else "Accuracy (%, val where no test)"
        )
        flags = {}
        overview, axes = plt.subplots(2, len(METRICS) // 2, figsize=(26, 10))
        for metric, ax in zip(METRICS, axes.flat, strict=True):
            fig, one = plt.subplots(figsize=(8, 5.2))
            flags[metric.name] = _plot(one, rows, metric, acc_label, sweeps)
            one.set_title(
                f"{task}: {acc_label.split(' (')[0].lower()} vs {metric.title}", fontsize=11
            )
            _legend(one, rows, sweeps, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            pngs.append(_save(fig, dest / f"{folder_name(task)}_acc_vs_{metric.name}.png", plt))
            _plot(ax, rows, metric, acc_label, sweeps, label_all=False)
            ax.set_title(metric.title.capitalize(), fontsize=11)
        _legend(overview, rows, sweeps, loc="center left", bbox_to_anchor=(1.0, 0.5))
        overview.suptitle(
            f"{task}: accuracy vs cost (labelled: the Pareto frontier, points "
            "no other beats on both axes; each metric's own PNG names every "
            "point)",
            fontsize=13,
        )
        overview.tight_layout()
        pngs.append(_save(overview, dest / f"{folder_name(task)}_overview.png", plt))
        tables.append(_table(task, rows, flags))
    md = atomic_write_text(dest / REPORT_MD, _markdown(docs, tables, pngs, dest))
    return {"markdown": str(md), "pngs": [str(p) for p in pngs], "tasks": tasks, "not_drawn": empty}


def _why_empty(docs: dict[str, dict], task: str) -> str:
    """Why task ``task`` has no point to draw, and what gives it some."""
    rows = [r for doc in docs.values() for r in doc["results"] if r["task"] == task]
    if not any(r["status"] == "trained" for r in rows):
        return f"task {task!r}: no run finished training (rerun the sweep with --resume)"
    return (
        f"task {task!r}: no run has a val or test accuracy (the store has no val or test "
        "split): extract a store with `--split val=0.1,test=0.1` to hold them out of train"
    )


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


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def _table(task: str, rows: list[dict[str, Any]], flags: dict[str, list[bool]]) -> str:
    head = (
        "| sweep | run | method | rank | layers | lr | val % | test % | params (M) | "
        "mem b1 (MB) | img/s | GMACs | mem b1 live (MB) | img/s live | infer mem b1 (MB) "
        "| infer img/s b1 | Pareto |\n" + "|---" * 17 + "|\n"
    )
    order = sorted(range(len(rows)), key=lambda i: -(rows[i]["val_acc"] or 0))
    lines = []
    for i in order:
        r = rows[i]
        front = "".join(m[0].upper() for m in ("params", "memory", "speed", "gmacs") if flags[m][i])
        lines.append(
            f"| {r['sweep']} | {r['run']}{' (best)' if r.get('best') else ''} | {r['method']} "
            f"| {_fmt(r['rank'], '')} | {r['layers']} | {base_lr(r)} "
            f"| {_pct(r['val_acc'])} | {_pct(r['test_acc'])} "
            f"| {r['learned_params'] / 1e6:.4f} | {_fmt(r['train_memory_b1'] / 1e6, '.2f')} "
            f"| {_fmt(r['train_img_s'], ',.0f')} | {_fmt(r.get('total_gmacs'), '.4f')} "
            f"| {_mb(r.get('train_memory_b1_live'))} | {_fmt(r.get('train_img_s_live'), ',.0f')} "
            f"| {_mb(r.get('infer_memory_b1'))} | {_fmt(r.get('infer_img_s_b1'), ',.1f')} "
            f"| {front or '-'} |"
        )
    return f"## {task}\n\n" + head + "\n".join(lines) + "\n"


def _markdown(docs: dict[str, dict], tables: list[str], pngs: list[Path], dest: Path) -> str:
    parts = [
        "# Sweep report\n",
        "Pareto column: on the frontier for P(arams), M(emory), S(peed), G(MACs). "
        "Memory: one training step at batch 1 (the paper's convention); speed: training "
        "img/s on in-memory features, averaged over the timed batches; 'live': the "
        "same with the frozen backbone's forward in every step (the paper's setting; a "
        "live baseline's only one); infer: a forward at batch 1, backbone included. "
        "GMACs are what the paper's tables call GFLOPs (FLOPs = 2 x MACs).\n",
        "| sweep | runs | mode | groups | bytes read | train s | config-img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, doc in docs.items():
        s = doc["summary"]
        parts.append(
            f"| {label} | {s['runs']} | {s['mode']} | {len(s['groups'])} "
            f"| {s['bytes_read']:,} | {s['train_seconds']:.1f} "
            f"| {_fmt(s['config_images_per_s'], ',.0f')} |"
        )
    parts.append("")
    parts += tables
    parts += [f"![{p.stem}]({p.relative_to(dest)})" for p in pngs if "overview" in p.name]
    return "\n".join(parts) + "\n"
