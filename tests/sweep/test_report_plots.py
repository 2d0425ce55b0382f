"""Plots people can read: labels that do not collide, one style per method in every
figure, plain tick numbers, accuracy in %."""

from __future__ import annotations

import itertools

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from losa_cache.sweep import report
from losa_cache.sweep.plotting import (
    fmt_number,
    method_style,
    place_labels,
    readable_axis,
)


def _row(
    method: str, acc: float, params: int, sweep: str = "a", rank: int | None = 4, lr: float = 0.01
) -> dict:
    return {
        "method": method,
        "acc": acc,
        "val_acc": acc,
        "test_acc": acc,
        "rank": rank,
        "layers": "all",
        "lr": lr,
        "learned_params": params,
        "sweep": sweep,
        "many": False,
    }


def _texts(ax) -> list:
    return [t for t in ax.texts if t.get_text()]


def test_labels_do_not_overlap_and_coincident_points_share_one() -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(x, y, f"point {x}-{y}") for x, y in itertools.product(range(4), range(4))]
    pts.append((1, 1, "twin of 1-1"))  # the same spot: one label naming both
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
    ax.set_xlim(-1, 5)
    ax.set_ylim(-1, 4)
    place_labels(ax, pts)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in _texts(ax)]
    assert len(boxes) == 16
    assert any("twin of 1-1" in t.get_text() and "point 1-1" in t.get_text() for t in _texts(ax))
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    plt.close(fig)


def test_a_method_has_one_colour_and_marker_in_single_and_compare_plots() -> None:
    """The colour follows the method's name, not its position among the plotted groups."""
    single = [_row("losa", 0.7, 20_000), _row("linear", 0.5, 0, rank=None)]
    compare = [_row("mist", 0.6, 30_000, "b"), _row("transformer", 0.4, 100_000, "b"), *single]
    metric = report.METRICS[0]

    def styles(rows: list[dict], sweeps: list[str]) -> dict[str, set]:
        fig, ax = plt.subplots()
        report._plot(ax, rows, metric, "Test accuracy (%)", sweeps)
        got: dict[str, set] = {}
        for line, r in zip(
            ax.lines, [r for r in rows if r.get(metric.key) is not None], strict=False
        ):
            got.setdefault(r["method"], set()).add((line.get_color(), line.get_marker()))
        plt.close(fig)
        return got

    one, two = styles(single, ["a"]), styles(compare, ["a", "b"])
    for method in ("losa", "linear"):
        want = {(method_style(method)["color"], method_style(method)["marker"])}
        assert one[method] == two[method] == want
    assert method_style("losa r16 taps=attn") == method_style("losa")  # a variant: its family
    assert method_style("new_side") == method_style("new_side")  # unknown names: stable


def test_accuracy_is_in_percent_and_titles_are_plain() -> None:
    fig, ax = plt.subplots()
    report._plot(ax, [_row("losa", 0.7125, 20_000)], report.METRICS[0], "Test accuracy (%)", ["a"])
    assert ax.lines[0].get_ydata()[0] == pytest.approx(71.25)
    plt.close(fig)
    titles = {m.name: m.title for m in report.METRICS}
    assert titles["memory_live"] == "training memory with the backbone"
    assert titles["gmacs"] == "inference compute"
    labels = {m.name: m.label for m in report.METRICS}
    assert labels["memory_live"] == "Training memory with the backbone (MB, batch 1)"


def test_log_ticks_are_plain_numbers_and_symlog_has_none_inside_its_linear_part() -> None:
    assert [fmt_number(v) for v in (0, 0.05, 2, 300, 5000, 1.2e6)] == [
        "0",
        "0.05",
        "2",
        "300",
        "5k",
        "1.2M",
    ]
    fig, ax = plt.subplots()
    xs = [0, 0, 5241, 19_209, 1_204_352]  # the linear probe's 0 params beside LoRA's
    ax.plot(xs, range(len(xs)), "o")
    readable_axis(ax, xs)
    ticks = list(ax.get_xticks())
    assert ax.get_xscale() == "symlog" and ticks[0] == 0
    assert all(t >= 1000 for t in ticks[1:])  # 100, 200, 500 would pile up beside 0
    plt.close(fig)
