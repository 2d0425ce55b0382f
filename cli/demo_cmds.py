"""`losa-cache demo`: the whole pipeline on the embedded data set and backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from losa_cache.cli.common import QuietOpt, emit_json, human_seconds, table, user_errors


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the store, runs and samples.")] = Path(
        "demo_out"
    ),
    tiny: Annotated[bool, typer.Option(help="A seconds-long smoke run (64 images/split).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    quiet: QuietOpt = False,
    video: Annotated[
        bool,
        typer.Option(
            help="The video demo instead: generated clips of a "
            "demo image moving 4 ways, the embedded ViT inflated to vivit_demo; "
            "linear vs LoSA without and with Eq. 6's temporal mixer."
        ),
    ] = False,
) -> None:
    """Extract the embedded data set with the embedded ViT once, train the linear probe and
    LoSA from the store, compare them, and predict a few images with the adapter.

    Example: losa-cache demo --out demo_out
    """
    from losa_cache.pipelines.demo import run_demo

    if video:
        return _video_demo(out, tiny, json_out, quiet)
    with user_errors():
        r = run_demo(out, tiny=tiny, progress=not quiet)
    if json_out:
        emit_json(r)
        return
    ex = r["extract"]
    verb = "reused" if ex["written"] == 0 else "extracted"
    typer.echo(
        f"\nstore: {verb} {r['store']} ({ex['num_images']:,} images, "
        f"{ex['images_per_s']:,.0f} img/s when extracting)"
    )
    rows = [
        [
            name,
            f"{m['learned_params']:,}",
            _pct(m["best_val_acc"]),
            _pct(m["test_acc"]),
            f"{m['images_per_s']:,.0f}",
            human_seconds(m["train_seconds"]),
        ]
        for name, m in r["runs"].items()
    ]
    typer.echo(
        table(
            rows, ["method", "learned params", "val acc", "test acc", "train img/s", "train time"]
        )
    )
    typer.echo("\npredictions of the LoSA adapter (live backbone + adapter):")
    for p in r["predictions"]:
        typer.echo(
            f"  {Path(p['image']).name}: "
            + (
                f"error {p['error']}"
                if "error" in p
                else f"{p['predicted']} ({p['prob']:.2f}), truth {p['truth']}"
            )
        )
    typer.echo(f"\nadapter: {r['runs']['losa']['adapter']}   next: losa-cache info {r['store']}")


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
    for p in r["predictions"]:
        typer.echo(
            f"  {Path(p['clip']).name}: "
            + (
                f"error {p['error']}"
                if "error" in p
                else f"{p['predicted']} ({p['prob']:.2f}), truth {p['truth']}"
            )
        )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
