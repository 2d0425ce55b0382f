"""Metrics rows to where people watch them: TensorBoard, or any Python callable.

Every row a run appends to its ``metrics.jsonl`` (``train``: loss, acc, lr, img_s, epoch,
memory_bytes; ``eval``/``test``: acc, loss; whatever else a row holds) is also handed to
the logger ``TrainConfig.log`` names (``train/sweep --log tensorboard``). A logger is made once per
run from a :class:`RunInfo` and called with each row; a sweep makes one per config, each
writing into its own run folder, so TensorBoard opened on ``SWEEP/runs`` compares them.

W&B, MLflow or anything else attaches in a few lines (no dependency here)::

    import wandb
    from losa_cache.train import TrainConfig, train
    from losa_cache.train.loggers import register_logger, scalars

    def to_wandb(run):  # once per run: its folder, config and resume step
        w = wandb.init(name=run.out.name, config=run.config, reinit="create_new")
        return lambda row: w.log(scalars(row), step=row["step"])

    register_logger("wandb", to_wandb)
    train(TrainConfig(store="stores/demo.zarr", out="runs/a", log="wandb"))

More (MLflow, closing runs): docs/data-and-logging.md. This module imports nothing heavy:
TensorBoard is imported when a run opens it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOGGERS",
    "RunInfo",
    "TensorBoardLogger",
    "logger_names",
    "open_logger",
    "register_logger",
    "scalars",
]

#: what a logger is called with: one metrics.jsonl row
RowCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunInfo:
    """What a logger may want to know about its run, given once when the run opens."""

    out: Path  # the run's folder (metrics.jsonl, checkpoint.pt, ...)
    config: dict[str, Any]  # its TrainConfig as JSON
    resume_step: int | None  # continuing after this step (later rows were dropped), or None


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A row's numbers as ``kind/name`` tags (``train/loss``, ``eval/acc``, ``test/acc``);
    the step, flags and text (the split name, an error) are left out."""
    kind = row.get("kind", "metrics")
    return {
        f"{kind}/{k}": float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        and math.isfinite(v)
    }  # fmt: skip


class TensorBoardLogger:
    """Event files in the run's folder, one scalar per ``kind/name`` tag at the row's step.

    Flushed after each row, so a killed run keeps what metrics.jsonl keeps; a resumed run
    purges the steps after its checkpoint (``purge_step``), as metrics.jsonl drops them.
    TensorBoard stores scalars as float32.
    """

    def __init__(self, run: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "--log tensorboard needs the tensorboard package: pip install 'losa-cache[tb]'"
            ) from None
        purge = None if run.resume_step is None else run.resume_step + 1
        self.writer = SummaryWriter(log_dir=str(run.out), purge_step=purge)

    def __call__(self, row: dict[str, Any]) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


#: logger name -> factory(RunInfo) -> callable(row); ``register_logger`` adds to it
LOGGERS: dict[str, Callable[[RunInfo], RowCallback]] = {"tensorboard": TensorBoardLogger}


def register_logger(
    name: str, factory: Callable[[RunInfo], RowCallback], replace: bool = False
) -> None:
    """Make ``log=name`` call ``factory(run)`` once per run, then its result per row (an
    object with a ``close()`` is closed when the run finishes). Names are unique."""
    if name == "none" or (name in LOGGERS and not replace):
        raise ValueError(f"a logger named {name!r} exists already; pass replace=True")
    LOGGERS[name] = factory


def logger_names() -> list[str]:
    """The values ``--log`` accepts."""
    return ["none", *LOGGERS]


def open_logger(name: str, run: RunInfo) -> list[RowCallback]:
    """The row callbacks of ``--log name`` for ``run`` (none for ``none``)."""
    if name == "none":
        return []
    if name not in LOGGERS:
        raise ValueError(f"unknown --log {name!r}; choose one of {logger_names()}")
    return [LOGGERS[name](run)]
