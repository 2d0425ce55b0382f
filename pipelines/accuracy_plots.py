"""The accuracy harness's figures for issue 24's rows: accuracy against shots per class and
against stored views, one panel per task.

Those rows differ in what they train on (k images per class, V augmented views), not in
what they cost, so the harness's accuracy-vs-cost figure would stack them on the same few
x positions (32 labels on one task in run ``accuracy-20261206-190217``); these put the
variable they change on the x axis instead. Each row says what it is (``family``,
``views``, ``augment``, ``shots``: pipelines/accuracy_views.stamp).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PerTask = dict[str, dict[str, dict[str, Any]]]
#: (family, views > 0, augment) -> its points {x: test accuracy}
Series = dict[tuple[str, bool, str | None], dict[float, float]]


def row_kind(cell: dict[str, Any]) -> str:
    """'shots' (a few-shot row), 'views' (a views row) or 'cost' (any other harness row)."""
    return "shots" if "shots" in cell else "views" if "family" in cell else "cost"


def kinds(per_task: PerTask) -> dict[str, str]:
    """Every row name of the run -> its :func:`row_kind`."""
    return {name: row_kind(cell) for cells in per_task.values() for name, cell in cells.items()}


def shot_series(cells: dict[str, dict[str, Any]]) -> Series:
    """One task's few-shot rows as lines: (family, with views, augment) -> {k: acc}."""
    out: Series = {}
    for cell in cells.values():
        if row_kind(cell) == "shots":
            key = (cell["family"], bool(cell["views"]), cell["augment"])
            out.setdefault(key, {})[cell["shots"]] = cell["test_acc"]
    return out


def view_series(cells: dict[str, dict[str, Any]]) -> Series:
    """One task's views rows as lines: (family, True, augment) -> {V: acc}; a family's
    V = 0 row (the clean store) starts the line of every augmentation."""
    views = [c for c in cells.values() if row_kind(c) == "views"]
    clean = {c["family"]: c["test_acc"] for c in views if not c["views"]}
    out: Series = {}
    for c in (c for c in views if c["views"]):
        line = out.setdefault((c["family"], True, c["augment"]), {})
        line[c["views"]] = c["test_acc"]
        if c["family"] in clean:
            line[0] = clean[c["family"]]
    return out


def _label(family: str, views: bool, augment: str | None, count: int | None = None) -> str:
    live = family.split()[0] == "full"
    what = "full fine-tuning, live" if live else f"{family}, cached"
    if not views:
        return f"{what}, clean features only"
    return f"{what}, {count or 'V'} views of {augment}"


def _style(family: str, views: bool, augment: str | None, mild: set[str]) -> dict[str, Any]:
    """Colour and marker by method (a live row is full fine-tuning's red triangle); a
    milder augmentation dashed with hollow markers; clean features only dotted."""
    from losa_cache.sweep.plotting import method_style

    other = augment in mild
    return {
        **method_style(family),
        "ls": ((0, (4, 2)) if other else "-") if views else ":",
        "lw": 1.8,
        "markersize": 7,
        "fillstyle": "none" if other else "full",
        "markeredgewidth": 1.5,
    }


def _figure(
    per_task: PerTask,
    tasks: Sequence[str],
    series_of: Callable[[dict[str, dict[str, Any]]], Series],
    xlabel: str,
    title: str,
    path: Path,
    classes: dict[str, int] | None,
    log_x: bool,
    views_count: dict[str, int] | None = None,
) -> Path | None:
    """One panel per task, one line per series, the legend below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, series_of(per_task.get(t, {}))) for t in tasks]
    panels = [(t, s) for t, s in panels if s]
    if not panels:
        return None
    every = sorted({k for _, s in panels for k in s}, key=lambda k: (k[0], k[1], str(k[2])))
    augments = list(dict.fromkeys(k[2] for k in every if k[2]))
    mild = set(augments[1:])  # the first is the harness's main augmentation
    width = max(4.6 * len(panels) + 0.6, 11.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 5.4), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (task, series) in zip(axes[0], panels, strict=True):
        xs = sorted({x for line in series.values() for x in line})
        for key in every:
            if key not in series:
                continue
            pts = sorted(series[key].items())
            (h,) = ax.plot(*zip(*pts, strict=True), **_style(*key, mild))
            count = (views_count or {}).get(key[0]) if key[1] else None
            handles.setdefault(_label(*key, count), h)
        if classes and task in classes:
            h = ax.axhline(100 / classes[task], color="0.5", lw=1, ls=(0, (1, 3)))
            handles.setdefault("chance (1 / classes)", h)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Test accuracy (%)")
        n = f", {classes[task]} classes" if classes and task in classes else ""
        ax.set_title(f"{task}{n}", fontsize=12)
        ax.grid(alpha=0.3)
    fig.suptitle(textwrap.fill(title, int(width * 10)), fontsize=12)
    ncol = max(1, min(3, len(handles), int(width // 5.5)))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol,
               fontsize=9, frameon=False)  # fmt: skip
    rows = -(-len(handles) // ncol)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_shots(per_task: PerTask, tasks: Sequence[str], path: Path, run: str,
               classes: dict[str, int] | None = None) -> Path | None:  # fmt: skip
    """Test accuracy against shots per class (log scale), one line per method; None when
    the run has no few-shot rows."""
    views = {c["family"]: c["views"] for t in per_task.values() for c in t.values()
             if row_kind(c) == "shots" and c["views"]}  # fmt: skip
    title = (f"Run {run}: few-shot test accuracy (k images per class of train800, lr chosen "
             "on val200, scored on the full test set)")  # fmt: skip
    return _figure(per_task, tasks, shot_series, "Training images per class (k, log scale)",
                   title, path, classes, log_x=True, views_count=views)  # fmt: skip


def plot_views(per_task: PerTask, tasks: Sequence[str], path: Path, run: str,
               classes: dict[str, int] | None = None) -> Path | None:  # fmt: skip
    """Test accuracy against stored views per train image (V = 0: clean features only),
    one line per method and augmentation; None when the run has no views rows."""
    title = (f"Run {run}: test accuracy against augmented views stored per train image "
             "(train800; V = 0: the clean features only)")  # fmt: skip
    return _figure(per_task, tasks, view_series, "Augmented views per train image (V)",
                   title, path, classes, log_x=False)  # fmt: skip
