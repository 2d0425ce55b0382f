"""`losa-cache demo`, wiring only: the whole pipeline on the embedded data set and backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from losa_cache.cli.common import emit_json, human_seconds, table, user_errors
from losa_cache.cli.options import build, command, config_params, output_params


def _demo(json_out: bool, quiet: bool, **values: Any) -> None:
    from losa_cache.pipelines.demo import DemoConfig, run_demo

    (cfg,) = build(values, DemoConfig)
    out = Path(cfg.out)
    if cfg.video:
        return _video_demo(out, cfg.tiny, json_out, quiet)
    with user_errors():
        r = run_demo(out, tiny=cfg.tiny, progress=not quiet)
    if json_out:
        return emit_json(r)
    ex = r["extract"]
    verb = "reused" if ex["written"] == 0 else "extracted"
    typer.echo(f"\nstore: {verb} {r['store']} ({ex['num_images']:,} images, "
               f"{ex['images_per_s']:,.0f} img/s when extracting)")  # fmt: skip
    rows = [[name, f"{m['learned_params']:,}", _pct(m["best_val_acc"]), _pct(m["test_acc"]),
             f"{m['images_per_s']:,.0f}", human_seconds(m["train_seconds"])]
            for name, m in r["runs"].items()]  # fmt: skip
    typer.echo(table(rows, ["method", "learned params", "val acc", "test acc", "train img/s",
                            "train time"]))  # fmt: skip
    typer.echo("\npredictions of the LoSA adapter (live backbone + adapter):")
    _predictions(r["predictions"], "image")
    typer.echo(f"\nadapter: {r['runs']['losa']['adapter']}   next: losa-cache info {r['store']}")


def _predictions(rows: list[dict[str, Any]], key: str) -> None:
    for p in rows:
        said = (f"error {p['error']}" if "error" in p
                else f"{p['predicted']} ({p['prob']:.2f}), truth {p['truth']}")  # fmt: skip
        typer.echo(f"  {Path(p[key]).name}: {said}")


def _make() -> Any:
    from losa_cache.pipelines.demo import DemoConfig

    return command(_demo, [*config_params(DemoConfig), *output_params(
        "Print machine-readable JSON.", storage=False)], DOC)  # fmt: skip


DOC = """Extract the embedded data set with the embedded ViT once, train the linear probe and
    LoSA from the store, compare them, and predict a few images with the adapter.

    Example: losa-cache demo --out demo_out
    """
demo = _make()


def _video_demo(out: Path, tiny: bool, json_out: bool, quiet: bool) -> None:
    from losa_cache.pipelines.video import run_video_demo, table

    with user_errors():
        r = run_video_demo(out / "video", tiny=tiny, progress=not quiet)
    if json_out:
        emit_json(r)
        return
    typer.echo(f"\nclips: {r['task']} (videofolder:, a demo image moving right/left/down/up)")
    typer.echo(f"store: {r['store']}\n")
    typer.echo(table(r))
    n = r["sizes"]
    typer.echo(
        f"({n['train']} train / {n['val']} val / {n['test']} test clips: one clip moves "
        f"test acc by {100 / n['test']:.1f} points; frame-order-blind runs top out at 50%)"
    )
    typer.echo("\npredictions of the Eq. 6 adapter (live vivit_demo + adapter):")
    _predictions(r["predictions"], "clip")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
