"""The `sweep` and `report` commands: many side networks from one pass, and their plots."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from losa_cache.cli.common import emit_json, human_bytes, table, user_errors
from losa_cache.cli.errors import run_errors
from losa_cache.cli.options import command, config_params, lists, output_params, sizes

__all__ = ["report", "sweep"]


def _opt(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help)


SWEEP_DOC = """Train the cross product of configs (or a --config list) in one pass over the data.

Every batch is read once (or, with --live, the backbone runs once) and fed to every
config; same-shape configs may step together (vmap); configs that do not fit in memory
together run in groups (one pass each). Each config trains exactly as `losa-cache train`
would alone (same init, batches, schedule, metrics files) in DIR/runs/<task>/<run>/; a
config whose loss diverges stops alone. Writes results.csv/json and the best adapter per
task (on val) in DIR/best/<task>/. Ctrl-C checkpoints; --resume continues.

With --live, --method may also name live baselines (full, lora, bitfit, vpt, partial):
each backpropagates through its own backbone copy, so one backbone pass cannot serve
them; they train one after another (a group each), before the side networks, which
share one backbone pass. results.csv gives every run's costs from the store and with the
backbone forward (the paper's setting), inference at batch 1, and GMACs.

Every run setting (method, rank, layers, lr, optimizer, seed, batch size, steps, the
methods' own options such as --width or --prompt-tokens) takes several values,
comma-separated (';' between values that hold commas: --layers 1,3;0,3,
--lora-targets qkv;qkv,fc1, --k-candidates 4,8;12): the grid is their cross product;
with --config they are the entries' defaults.

Example: losa-cache sweep --store stores/demo.zarr --method losa,linear --rank 4,16,64 \
--layers evenly:1,all --lr 0.01,0.05 --epochs 5 --out runs/sweep
"""


def _sweep(
    json_out: bool,
    quiet: bool,
    storage_options: str | None,
    config: str | None,
    store: str | None,
    **settings: Any,
) -> None:
    from losa_cache.store.store import parse_storage_options
    from losa_cache.sweep import SweepConfig, load_entries, run_sweep

    with run_errors():
        cfg = SweepConfig(
            store=store or "",
            **lists(SweepConfig, sizes(SweepConfig, settings)),
            configs=load_entries(config) if config else None,
        )
        res = run_sweep(
            cfg, progress=not quiet, storage_options=parse_storage_options(storage_options)
        )
    if json_out:
        emit_json(res)
    elif not res.get("complete", True):
        typer.echo(f"stopped in group {res['group'] + 1}: rerun with --resume to continue")
    else:
        typer.echo(summary(res))


def _make() -> Any:
    from losa_cache.sweep import SweepConfig

    params = config_params(SweepConfig, override={"store": (str | None, None)})
    return command(_sweep, [*params, *output_params("Print results.json.")], SWEEP_DOC)


sweep = _make()


def summary(res: dict[str, Any]) -> str:
    """The results table, groups, reads and the best config per task."""
    s, rows = res["summary"], res["results"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"
    lines = [
        table(
            [
                [
                    r["task"],
                    r["run"],
                    pct(r["val_acc"]),
                    pct(r["test_acc"]),
                    f"{r['learned_params'] / 1e6:.4f}",
                    human_bytes(r["train_memory_b1"]),
                    "-" if r["train_img_s"] is None else f"{r['train_img_s']:,.0f}",
                    "-" if r["inference_gflops"] is None else f"{r['inference_gflops']:.3f}",
                    r["status"] + (" *" if r["best"] else ""),
                ]
                for r in rows
            ],
            ["task", "run", "val %", "test %", "params M", "mem b1", "img/s", "GFLOPs", "status"],
        )
    ]
    lines.append(
        f"\n{s['runs']} runs, {len(s['groups'])} group(s), {s['mode']}: "
        f"{human_bytes(s['bytes_read'])} read, {s['train_seconds']:.1f} s training "
        f"({s['config_images_per_s'] or 0:,.0f} config-img/s)"
    )
    for g in s["groups"]:
        lines.append(
            f"  group {g['group'] + 1}: {len(g['runs'])} runs, est. "
            f"{human_bytes(g['estimate_bytes'])}, {human_bytes(g['bytes_read'])} read"
        )
    for addr, w in s.get("cluster", {}).get("workers", {}).items():  # --cluster/--scheduler
        lines.append(
            f"  worker {addr}: busy {w['busy_seconds']:.1f} s, groups "
            f"{', '.join(str(g + 1) for g in w['groups'])}"
        )
    for t, b in s["best"].items():
        lines.append(f"best {t}: {b['run']} (val {pct(b['val_acc'])}%) -> {b['adapter']}")
    for d in s.get("diverged", []):
        kept = d["last_checkpoint"] or "no checkpoint yet"
        lines.append(f"diverged {d['run']}: stopped alone; last good checkpoint: {kept}")
    return "\n".join(lines)


def report(
    sweep_dir: Annotated[str, typer.Argument(help="A finished sweep folder.")],
    compare: Annotated[
        list[str] | None, _opt("More sweep folders on the same plots (repeatable).")
    ] = None,
    out: Annotated[
        str | None, _opt("Folder for PNGs and report.md (default: SWEEP_DIR/report).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the written paths as JSON.")
    ] = False,
) -> None:
    """Plot accuracy against learned params, training memory, speed and inference GFLOPs.

    One PNG per task and metric plus a 2x2 overview, the Pareto frontier circled in yellow
    (as the LoSA paper's Fig. 4), and report.md with the tables.

    Example: losa-cache report runs/sweep --compare runs/sweep-live --out runs/report
    """
    from losa_cache.sweep.report import make_report

    with user_errors():
        res = make_report([sweep_dir, *(compare or [])], out)
    if json_out:
        emit_json(res)
    else:
        typer.echo(f"wrote {len(res['pngs'])} plots and {res['markdown']}")
        for why in res["not_drawn"].values():
            typer.echo(f"nothing drawn for {why}")
