"""The `sweep` and `report` commands: many side networks from one pass, and their plots."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from losa_cache.cli.common import emit_json, human_bytes, table, user_errors

__all__ = ["parse_layer_specs", "report", "sweep"]


def _opt(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def parse_layer_specs(text: str) -> list[str]:
    """'evenly:1,evenly:4,all' -> 3 specs; runs of integers stay one explicit list
    ('3,6,-1' is one spec); ';' separates specs when several explicit lists are needed."""
    if ";" in text:
        return [p.strip() for p in text.split(";") if p.strip()]
    specs: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.lstrip("-").isdigit() and specs and specs[-1].replace(",", "").replace(
                "-", "").isdigit():
            specs[-1] += f",{part}"
        else:
            specs.append(part)
    return specs


def _numbers(text: str | None, kind: type, name: str) -> list[Any] | None:
    try:
        return None if text is None else [kind(p) for p in _split(text) or []]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated numbers, got {text!r}") from None


def sweep(
    store: Annotated[str, _opt("Feature store path or URL.")],
    out: Annotated[str, _opt("Sweep folder: results, checkpoint, adapters.")] = "runs/sweep",
    task: Annotated[str | None, _opt("Tasks (labellings), comma-separated (default: the "
                                     "store's).")] = None,
    method: Annotated[str | None, _opt("Methods, comma-separated: losa,linear.")] = None,
    rank: Annotated[str | None, _opt("LoSA ranks, e.g. 4,8,16,64 (linear ignores it).")
                    ] = None,
    layers: Annotated[str | None, _opt("Layer specs, e.g. evenly:1,evenly:4,all (an explicit "
                                       "list like 3,6,-1 is one spec; ';' separates lists).")
                      ] = None,
    lr: Annotated[str | None, _opt("Base lrs, e.g. 0.01,0.05 (default: the optimizer's).")
                  ] = None,
    config: Annotated[str | None, _opt("JSON list of config objects instead of the grid; "
                                       "values may be lists (expanded).")] = None,
    epochs: Annotated[float | None, _opt("Epochs per run.")] = None,
    steps: Annotated[int | None, _opt("Steps per run (instead of --epochs).")] = None,
    batch_size: Annotated[int, _opt("Batch size (capped at each task's train split).")] = 512,
    optimizer: Annotated[str, _opt("sgd | adamw.")] = "sgd",
    weight_decay: Annotated[float | None, _opt("Weight decay (default: the optimizer's).")
                            ] = None,
    seed: Annotated[int, _opt("Seed of initialisation and batch order.")] = 0,
    cache: Annotated[str, _opt("Features in memory: auto | gpu | ram | none (stream).")
                     ] = "auto",
    batching: Annotated[str, _opt("Same-shape models: auto (CPU: loop; CUDA: the faster of "
                                  "loop and vmap, timed) | loop | vmap.")] = "auto",
    memory_budget: Annotated[str | None, _opt("Memory the models of one group may use, e.g. "
                                              "4GB (default: a share of free memory).")] = None,
    checkpoint_every: Annotated[int | None, _opt("Checkpoint every N ticks (default: 10 per "
                                                 "group).")] = None,
    speed_batches: Annotated[int, _opt("Batches timed per config for img/s (0 skips).")] = 50,
    stop_after: Annotated[int | None, _opt("Stop after N ticks with a checkpoint "
                                           "(--resume later).")] = None,
    device: Annotated[str, _opt("auto | cpu | cuda | cuda:N.")] = "auto",
    amp: Annotated[str, _opt("auto (bf16 on CUDA) | bf16 | fp32.")] = "auto",
    workers: Annotated[int, _opt("Reader I/O threads.")] = 4,
    train_split: Annotated[str, _opt("Train split (auto: train | train800).")] = "auto",
    val_split: Annotated[str, _opt("Validation split, picks the best (auto; none).")] = "auto",
    test_split: Annotated[str, _opt("Test split (auto: test; none).")] = "auto",
    resume: Annotated[bool, _opt("Continue the sweep in --out.")] = False,
    storage_options: Annotated[str | None, _opt(
        "fsspec options for a store URL as JSON (default: $LOSA_CACHE_STORAGE_OPTIONS).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print results.json.")] = False,
) -> None:
    """Train the cross product of configs (or a --config list) in one pass over the store.

    Every batch is read once and fed to every config; same-shape configs may step together
    (vmap); configs that do not fit in memory together run in groups (one pass each). Each
    config trains exactly as `losa-cache train` would alone (same init, batches, schedule).
    Writes results.csv/json, an adapter per config and the best per task (on val) in
    DIR/best/<task>/. Ctrl-C checkpoints; --resume continues.

    Example: losa-cache sweep --store stores/demo.zarr --method losa,linear --rank 4,16,64 \
--layers evenly:1,all --lr 0.01,0.05 --epochs 5 --out runs/sweep
    """
    from losa_cache.store.store import parse_storage_options
    from losa_cache.sweep import SweepConfig, load_entries, run_sweep
    from losa_cache.sweep.config import parse_bytes

    with user_errors():
        grid = {"methods": _split(method), "ranks": _numbers(rank, int, "rank"),
                "layers": None if layers is None else parse_layer_specs(layers),
                "lrs": _numbers(lr, float, "lr")}
        if config is not None and any(v is not None for v in grid.values()):
            raise ValueError("give --config or the grid options (--method/--rank/--layers/"
                             "--lr), not both")
        cfg = SweepConfig(
            store=store, out=out, tasks=_split(task), **{k: v for k, v in grid.items() if v},
            configs=load_entries(config) if config else None, steps=steps, epochs=epochs,
            batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay, seed=seed,
            cache=cache, device=device, amp=amp, workers=workers, batching=batching,
            memory_budget=parse_bytes(memory_budget), checkpoint_every=checkpoint_every,
            speed_batches=speed_batches, stop_after=stop_after, resume=resume,
            train_split=train_split, val_split=val_split, test_split=test_split)
        res = run_sweep(cfg, progress=not json_out,
                        storage_options=parse_storage_options(storage_options))
    if json_out:
        emit_json(res)
    elif not res.get("complete", True):
        typer.echo(f"stopped in group {res['group'] + 1}: rerun with --resume to continue")
    else:
        typer.echo(summary(res))


def summary(res: dict[str, Any]) -> str:
    """The results table, groups, reads and the best config per task."""
    s, rows = res["summary"], res["results"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"
    lines = [table([[r["task"], r["run"], pct(r["val_acc"]), pct(r["test_acc"]),
                     f"{r['learned_params'] / 1e6:.4f}", human_bytes(r["train_memory_b1"]),
                     "-" if r["train_img_s"] is None else f"{r['train_img_s']:,.0f}",
                     "-" if r["inference_gflops"] is None else f"{r['inference_gflops']:.3f}",
                     r["status"] + (" *" if r["best"] else "")] for r in rows],
                   ["task", "run", "val %", "test %", "params M", "mem b1", "img/s", "GFLOPs",
                    "status"])]
    lines.append(f"\n{s['runs']} runs, {len(s['groups'])} group(s), {s['mode']}: "
                 f"{human_bytes(s['bytes_read'])} read, {s['train_seconds']:.1f} s training "
                 f"({s['config_images_per_s'] or 0:,.0f} config-img/s)")
    for g in s["groups"]:
        lines.append(f"  group {g['group'] + 1}: {len(g['runs'])} runs, est. "
                     f"{human_bytes(g['estimate_bytes'])}, {human_bytes(g['bytes_read'])} read")
    for t, b in s["best"].items():
        lines.append(f"best {t}: {b['run']} (val {pct(b['val_acc'])}%) -> {b['adapter']}")
    return "\n".join(lines)


def report(
    sweep_dir: Annotated[str, typer.Argument(help="A finished sweep folder.")],
    compare: Annotated[list[str] | None, _opt("More sweep folders on the same plots "
                                              "(repeatable).")] = None,
    out: Annotated[str | None, _opt("Folder for PNGs and report.md (default: "
                                    "SWEEP_DIR/report).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the written paths as JSON.")
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
