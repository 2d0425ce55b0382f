"""Readable accuracy-vs-cost plots: one style per method, readable log ticks, labels that
do not collide. Shared by ``losa-cache report`` (one sweep or several) and the accuracy
harness's figure, so a method has the same colour and marker in every figure.

    style = method_style("losa r16 taps=attn")     # {"color": ..., "marker": "o"}
    readable_axis(ax, xs)                          # log / symlog ticks as 0.1, 1, 10k
    place_labels(ax, [(x, y, "losa r16"), ...])    # every point named, no overlaps
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["fmt_number", "method_family", "method_style", "place_labels", "readable_axis"]

#: One colour and marker per method, keyed by name: the same in every figure.
STYLES: dict[str, tuple[str, str]] = {
    "losa": ("#1f77b4", "o"), "linear": ("#7f7f7f", "s"), "lowrank_mlp": ("#17becf", "v"),
    "transformer": ("#9467bd", "P"), "mist": ("#2ca02c", "D"), "full": ("#d62728", "^"),
    "lora": ("#ff7f0e", "<"), "bitfit": ("#8c564b", ">"), "vpt": ("#e377c2", "X"),
    "partial": ("#bcbd22", "*"),
}  # fmt: skip
#: Methods outside STYLES (a new side network): a colour and marker from their name's hash.
SPARE = (("#393b79", "h"), ("#637939", "p"), ("#8c6d31", "d"), ("#843c39", "H"),
         ("#7b4173", "8"), ("#3182bd", "1"))  # fmt: skip


def method_family(name: str) -> str:
    """``"losa r16 taps=attn"`` -> ``"losa"``: the method a labelled variant belongs to."""
    return name.split()[0] if name else name


def method_style(name: str) -> dict[str, str]:
    """Colour and marker of a method (or a labelled variant of one), fixed by its name."""
    family = method_family(name)
    color, marker = STYLES.get(family) or SPARE[zlib.crc32(family.encode()) % len(SPARE)]
    return {"color": color, "marker": marker}


def fmt_number(v: float) -> str:
    """Tick text a person reads: 0, 0.05, 2, 300, 5k, 1.2M."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:.3g}"


def readable_axis(ax: Any, xs: Sequence[float], axis: str = "x") -> None:
    """A log axis where the values span 20x or more (symlog when some are 0, such as the
    linear probe's parameters), ticks at 1-2-5 steps over up to three decades, labelled
    as plain numbers; a linear axis with five ticks otherwise."""
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        MaxNLocator,
        NullFormatter,
    )

    target = ax.xaxis if axis == "x" else ax.yaxis
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    positive = [x for x in xs if x > 0]
    label = FuncFormatter(lambda v, _pos: fmt_number(v))
    if not positive or max(positive) / min(positive) < 20:
        target.set_major_locator(MaxNLocator(5))
        target.set_major_formatter(label)
        return
    decades = math.log10(max(positive) / min(positive))
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    if len(positive) < len(xs):  # zeros: linear up to the smallest positive value's decade
        lin = 10 ** math.floor(math.log10(min(positive)))
        set_scale("symlog", linthresh=lin, linscale=0.5)
        top = 10 ** math.ceil(math.log10(max(positive)))
        ticks = [0.0] + [
            m * lin * 10**k
            for k in range(round(math.log10(top / lin)) + 1)
            for m in subs
            if m * lin * 10**k <= top
        ]
        target.set_major_locator(FixedLocator(ticks))  # none inside the linear part
    else:
        set_scale("log")
        target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(label)
    target.set_minor_formatter(NullFormatter())


def place_labels(
    ax: Any,
    points: Sequence[tuple[float, float, str]],
    fontsize: float = 7,
    color: str = "0.15",
    join: Callable[[list[str]], str] | None = None,
) -> None:
    """Name every point without labels overlapping each other, the points or the frame.

    Points at the same spot share one label (``join`` of their names, default one a
    line). Each label takes the first
    free spot on rings around its point (a thin leader line when it sits away from it);
    where none is free, the spot that overlaps least. Call after limits and scales are set.
    """
    if not points:
        return
    fig = ax.figure
    fig.canvas.draw()  # final transforms and a renderer for text extents
    renderer = fig.canvas.get_renderer()
    spots = _merge(ax, points, join or "\n".join)
    frame = ax.get_window_extent(renderer)
    dots = [_box(px, py, 5) for px, py, _ in spots]
    placed: list[tuple[float, float, float, float]] = []
    for i, (px, py, text) in enumerate(spots):
        xy = ax.transData.inverted().transform((px, py))
        others = [d for j, d in enumerate(dots) if j != i]
        best: tuple[float, dict[str, Any], tuple[float, ...]] | None = None
        for offset in _OFFSETS:
            kw = {
                "xy": xy,
                "textcoords": "offset points",
                "fontsize": fontsize,
                "color": color,
                "zorder": 4,
                **offset,
            }
            probe = ax.annotate(text, **kw)
            bb = probe.get_window_extent(renderer)
            probe.remove()
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            cost = sum(_overlap(box, p) for p in [*placed, *others])
            cost += 4 * _outside(box, frame) + _crossings((px, py), box, placed)
            if best is None or cost < best[0]:
                best = (cost, kw, box)
            if cost == 0:
                break
        assert best is not None
        _, kw, box = best
        placed.append(box)
        if max(abs(v) for v in kw["xytext"]) > 6:  # away from its point: a leader line
            kw["arrowprops"] = {
                "arrowstyle": "-",
                "color": "0.6",
                "lw": 0.6,
                "shrinkA": 0,
                "shrinkB": 3,
            }
        ax.annotate(text, **kw)


def _offsets() -> list[dict[str, Any]]:
    """Candidate label spots, nearest first: 8 directions on growing rings (in points)."""
    out = []
    for radius in (5, 10, 16, 24, 34, 46, 60, 78):
        for dx, dy in _DIRECTIONS:
            out.append(
                {
                    "xytext": (dx * radius, dy * radius),
                    "ha": "left" if dx > 0 else "right" if dx < 0 else "center",
                    "va": "bottom" if dy > 0 else "top" if dy < 0 else "center",
                }
            )
    return out


_DIRECTIONS = (
    (1, 1),
    (1, -1),
    (-1, 1),
    (-1, -1),
    (1, 0),
    (-1, 0),
    (0, 1),
    (0, -1),
    (1, 0.5),
    (1, -0.5),
    (-1, 0.5),
    (-1, -0.5),
    (0.5, 1),
    (-0.5, 1),
    (0.5, -1),
    (-0.5, -1),
)
_OFFSETS = _offsets()


def _merge(
    ax: Any, points: Sequence[tuple[float, float, str]], join: Callable[[list[str]], str]
) -> list[tuple[float, float, str]]:
    """Points within 3 px of each other: one spot, their names joined."""
    spots: list[list[Any]] = []
    for x, y, text in points:
        px, py = ax.transData.transform((x, y))
        for s in spots:
            if abs(s[0] - px) <= 3 and abs(s[1] - py) <= 3:
                if text not in s[2]:
                    s[2].append(text)
                break
        else:
            spots.append([px, py, [text]])
    return [(px, py, join(names)) for px, py, names in spots]


def _crossings(
    dot: tuple[float, float], box: tuple[float, ...], placed: Sequence[tuple[float, ...]]
) -> float:
    """A cost for the leader line from ``dot`` to ``box`` running through placed labels."""
    tx = min(max(dot[0], box[0]), box[2])  # the box's point nearest the dot
    ty = min(max(dot[1], box[1]), box[3])
    hits = 0
    for k in range(1, 10):
        x, y = dot[0] + (tx - dot[0]) * k / 10, dot[1] + (ty - dot[1]) * k / 10
        hits += sum(p[0] <= x <= p[2] and p[1] <= y <= p[3] for p in placed)
    return 40.0 * hits


def _box(x: float, y: float, r: float) -> tuple[float, float, float, float]:
    return (x - r, y - r, x + r, y + r)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def _outside(box: tuple[float, ...], frame: Any) -> float:
    """Area of ``box`` outside the axes."""
    inside = _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
    return (box[2] - box[0]) * (box[3] - box[1]) - inside
