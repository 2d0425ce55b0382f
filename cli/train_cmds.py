"""The `train` command: a side network from a feature store (or live), wiring only."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from losa_cache.cli.common import emit_json, human_bytes, user_errors

__all__ = ["train"]


def _opt(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help)


def train(
    store: Annotated[str | None, _opt("Feature store path or URL (not with --live).")] = None,
    out: Annotated[str, _opt("Output folder: checkpoint, metrics, adapter.")] = "runs/train",
    task: Annotated[str | None, _opt("Labelling to train on (default: the store's).")] = None,
    method: Annotated[str, _opt("Side network: losa | linear.")] = "losa",
    rank: Annotated[int, _opt("Low-rank bottleneck r.")] = 64,
    layers: Annotated[str, _opt("store | all | last:N | evenly:N | 3,6,-1 (0-based).")
                      ] = "store",
    steps: Annotated[int | None, _opt("Optimizer steps (default: min(20000, 100 epochs)).")
                     ] = None,
    epochs: Annotated[float | None, _opt("Passes over the train split (instead of --steps).")
                      ] = None,
    batch_size: Annotated[int, _opt("Batch size (capped at the train split's size).")] = 512,
    lr: Annotated[float | None, _opt("Base lr (SGD: 0.05 x batch/512; AdamW: 1e-3).")] = None,
    optimizer: Annotated[str, _opt("sgd (momentum 0.9) | adamw.")] = "sgd",
    weight_decay: Annotated[float | None, _opt("Weight decay (default: SGD 0, AdamW 0.05).")
                            ] = None,
    label_smoothing: Annotated[float, _opt("Label smoothing in [0, 1).")] = 0.0,
    warmup_steps: Annotated[int | None, _opt("Warmup steps (default: min(500, 10%)).")] = None,
    cache: Annotated[str, _opt("Features in memory: auto | gpu | ram | none.")] = "auto",
    seed: Annotated[int, _opt("Seed of initialisation and batch order.")] = 0,
    eval_every: Annotated[int | None, _opt("Validate every N steps (default: 10 per run).")
                          ] = None,
    device: Annotated[str, _opt("auto | cpu | cuda | cuda:N.")] = "auto",
    amp: Annotated[str, _opt("auto (bf16 on CUDA) | bf16 | fp32.")] = "auto",
    workers: Annotated[int, _opt("Reader I/O threads (live: decoding processes).")] = 4,
    train_split: Annotated[str, _opt("Train split (auto: train | train800).")] = "auto",
    val_split: Annotated[str, _opt("Validation split (auto: val | val200 | validation; none)."
                                   )] = "auto",
    test_split: Annotated[str, _opt("Test split (auto: test; none).")] = "auto",
    resume: Annotated[bool, _opt("Continue the run whose checkpoint is in --out.")] = False,
    stop_at: Annotated[int | None, _opt("Stop after this step (checkpointed; --resume later)."
                                        )] = None,
    live: Annotated[bool, _opt("Run the frozen backbone on every batch (no store).")] = False,
    model: Annotated[str | None, _opt("Live: backbone alias or timm name.")] = None,
    checkpoint: Annotated[str | None, _opt("Live: backbone weights file.")] = None,
    pretrained: Annotated[bool, _opt("Live: timm weights from the local cache.")] = False,
    random_init: Annotated[bool, _opt("Live: random backbone weights, on purpose.")] = False,
    init_seed: Annotated[int, _opt("Live: seed of --random-init.")] = 0,
    dataset: Annotated[str | None, _opt("Live: data set spec (as for extract).")] = None,
    data_root: Annotated[str | None, _opt("Live: root folder of inat data sets.")] = None,
    limit: Annotated[int | None, _opt("Live: at most N images per split.")] = None,
    storage_options: Annotated[str | None, _opt(
        'fsspec options for a store URL as JSON (default: $LOSA_CACHE_STORAGE_OPTIONS).')
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON.")
                        ] = False,
) -> None:
    """Train a LoSA side network (or the linear probe) from a store, then save an adapter.

    Defaults follow the paper (SGD momentum 0.9, cosine, warmup, lr 0.05 at batch 512),
    scaled for small data. Validates during training, tests at the end, writes
    metrics.jsonl, metrics.json, checkpoint.pt and adapter.{json,safetensors} into --out.

    Example: losa-cache train --store stores/demo.zarr --method losa --rank 16 --steps 300 \
--out runs/demo-losa
    """
    settings = {k: v for k, v in locals().items()  # = TrainConfig fields
                if k not in ("json_out", "storage_options")}
    from losa_cache.store.store import parse_storage_options
    from losa_cache.train import TrainConfig
    from losa_cache.train import train as run

    with user_errors():
        options = parse_storage_options(storage_options)
        metrics = run(TrainConfig(**settings), progress=not json_out, storage_options=options)
    if json_out:
        emit_json(metrics)
    else:
        typer.echo(summary(metrics))


def summary(m: dict[str, Any]) -> str:
    """A few lines a person reads after a run."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    lines = [
        f"{m['method']} r={m['rank']} layers {m['layers']}: {m['step']} steps "
        f"(batch {m['plan']['batch_size']}, lr {m['plan']['lr']:.4g}) on {m['device']}",
        f"val acc     best {pct(m['best_val_acc'])} (step {m['best_val_step']}), "
        f"final {pct(m['final_val_acc'])}",
        f"test acc    {pct(m['test_acc'])}",
        f"speed       {m['images_per_s']:,.0f} img/s, {human_bytes(m['bytes_read'])} read, "
        f"peak memory {human_bytes(m['peak_memory_bytes'])}",
        f"params      {m['learned_params'] / 1e6:.4f}M learned (head excluded)",
    ]
    if m.get("adapter"):
        lines.append(f"adapter     {m['adapter']}")
    elif not m["complete"]:
        lines.append(f"stopped     at step {m['step']}: rerun with --resume to continue")
    return "\n".join(lines)
