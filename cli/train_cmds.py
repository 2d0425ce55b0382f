"""The `train` command: a side network from a feature store (or live), wiring only."""

from __future__ import annotations

from typing import Any

import typer

from losa_cache.cli.common import emit_json, human_bytes
from losa_cache.cli.errors import run_errors
from losa_cache.cli.options import command, config_params, output_params, sizes

__all__ = ["train"]


DOC = """Train a LoSA side network (or the linear probe) from a store, then save an adapter.

    Defaults follow the paper (SGD momentum 0.9, cosine, warmup, lr 0.05 at batch 512),
    scaled for small data. Validates during training, tests at the end, writes
    metrics.jsonl, metrics.json, checkpoint.pt and adapter.{json,safetensors} into --out.
    Every option is a TrainConfig field. With --live the frozen backbone runs on every
    batch instead (same batches as a store, for the same seed). --live also runs the live
    baselines (full, lora, adaptformer ...: see --method): the model is a trainable copy of the
    backbone plus the same head, fed images; lora also saves peft's own adapter in peft/.

    Example: losa-cache train --store stores/demo.zarr --method losa --rank 16 --steps 300 \
--out runs/demo-losa
    """


def _train(json_out: bool, quiet: bool, storage_options: str | None, **settings: Any) -> None:
    from losa_cache.store.store import parse_storage_options
    from losa_cache.train import TrainConfig
    from losa_cache.train import train as run

    with run_errors():
        options = parse_storage_options(storage_options)
        metrics = run(
            TrainConfig(**sizes(TrainConfig, settings)), progress=not quiet, storage_options=options
        )
    if json_out:
        emit_json(metrics)
    else:
        typer.echo(summary(metrics))


def _make() -> Any:
    from losa_cache.train import TrainConfig

    params = config_params(TrainConfig)
    return command(_train, [*params, *output_params("Print the final metrics as JSON.")], DOC)


train = _make()


def _options(m: dict[str, Any]) -> str:
    """The method's own settings (losa's r=64, mist's width=16 ...), layers apart."""
    opts = m.get("options", {})
    return "".join(f"{'r' if k == 'rank' else k}={v} " for k, v in opts.items() if k != "layers")


def summary(m: dict[str, Any]) -> str:
    """A few lines a person reads after a run."""
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    lines = [
        f"{m['method']} {_options(m)}layers {m['layers']}: {m['step']} steps "
        f"(batch {m['plan']['batch_size']}, lr {m['plan']['lr']:.4g}) on {m['device']}",
        f"val acc     best {pct(m['best_val_acc'])} (step {m['best_val_step']}), "
        f"final {pct(m['final_val_acc'])}",
        f"test acc    {pct(m['test_acc'])}",
        f"speed       {m['images_per_s']:,.0f} img/s, {human_bytes(m['bytes_read'])} read, "
        f"peak memory {human_bytes(m['peak_memory_bytes'])}",
        f"params      {m['learned_params'] / 1e6:.4f}M learned (head excluded)",
    ]
    if m.get("k_choice"):  # mist: G_k's k chosen on val among the candidates
        c = m["k_choice"]
        lines.append("k on val    " + ", ".join(
            f"{k} {pct(v)}{' (chosen)' if int(k) == c['chosen'] else ''}"
            for k, v in c["candidates"].items()))  # fmt: skip
    if m.get("adapter"):
        lines.append(f"adapter     {m['adapter']}")
    elif not m["complete"]:
        lines.append(f"stopped     at step {m['step']}: rerun with --resume to continue")
    return "\n".join(lines)
