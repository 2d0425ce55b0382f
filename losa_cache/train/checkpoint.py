"""Checkpoints (written atomically) and the metrics log of a training run.

A checkpoint holds everything the next step depends on: side network, optimizer,
scheduler, RNG states, the reader's stream position and the step, plus the configs and
the evaluation history, so ``--resume`` continues bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from losa_cache.outdir import atomic_write, atomic_write_text, write_error

__all__ = [
    "CHECKPOINT",
    "METRICS",
    "METRICS_LOG",
    "CheckpointError",
    "MetricsLog",
    "load_checkpoint",
    "memory_now",
    "peak_memory",
    "reset_peak_memory",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
METRICS = "metrics.json"


def save_checkpoint(out: Path, payload: dict[str, Any]) -> Path:
    """Write ``out/checkpoint.pt`` aside and rename it, so a crash keeps the previous one;
    a full disk is one error naming the file and the fix."""
    return atomic_write(out / CHECKPOINT, lambda tmp: torch.save(payload, tmp))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: cut short or damaged on disk (writes are atomic,
    so a crash never leaves one half-written)."""


def load_checkpoint(out: Path) -> dict[str, Any]:
    path = out / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"--resume: no {CHECKPOINT} in {out}; run without --resume to "
            "start, or point --out at the run to continue"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, flipped bytes, not a torch file
        raise CheckpointError(
            f"--resume: {path} is damaged or incomplete ({type(e).__name__}); restore it from "
            "a copy, or train again without --resume into a new --out (nothing in "
            f"{out} was changed)"
        ) from e
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(
            f"--resume: {path} is not a losa-cache training checkpoint; "
            "point --out at the run to continue"
        )
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reset_peak_memory(device: torch.device) -> int | None:
    """Start measuring the run's peak memory; returns the CPU baseline RSS (Linux) or None.

    On CPU the process's lifetime peak (ru_maxrss) includes imports and anything the caller
    did before training, so on Linux the kernel's high-water mark is reset here instead
    (``/proc/self/clear_refs``) and the run reports its growth over this baseline.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return None
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kib("VmRSS") * 1024
    except OSError:
        return None


def peak_memory(device: torch.device, baseline: int | None = None) -> dict[str, Any]:
    """Peak memory of the run: CUDA allocator peak; on CPU the RSS high-water mark's growth
    since :func:`reset_peak_memory`, else (no /proc) the process's lifetime peak RSS."""
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_kind": "cuda_max_allocated",
        }
    if baseline is not None:
        with contextlib.suppress(OSError):
            peak = _proc_status_kib("VmHWM") * 1024
            return {
                "peak_memory_bytes": max(0, peak - baseline),
                "peak_memory_kind": "rss_high_water_growth",
            }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_memory_bytes": int(rss * scale), "peak_memory_kind": "process_max_rss"}


def memory_now(device: torch.device) -> int:
    """Memory in use now, for the learning curves: tensors the CUDA allocator holds on a
    GPU, the process's resident set on CPU (0 where neither can be read)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    with contextlib.suppress(OSError, ValueError):
        return _proc_status_kib("VmRSS") * 1024
    return 0


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


class MetricsLog:
    """Append-only JSONL of train/eval records. On resume the log is rewritten (aside,
    then renamed: a kill keeps the old one) without what the checkpoint did not see:
    later steps, a line cut short by a kill, and the test record (the end re-tests).

    ``sinks`` (``--log``: losa_cache/train/loggers.py) get every record after it is written.
    """

    def __init__(
        self,
        out: Path,
        resume_step: int | None,
        sinks: Sequence[Callable[[dict[str, Any]], None]] = (),
    ) -> None:
        self.path = out / METRICS_LOG
        self.sinks = list(sinks)
        if resume_step is None:
            atomic_write_text(self.path, "")
        elif self.path.exists():
            keep = [
                json.dumps(r, sort_keys=True)
                for r in self._read()
                if r.get("step", 0) <= resume_step and r.get("kind") != "test"
            ]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def _read(self) -> list[dict[str, Any]]:
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # an append cut short by a kill: after the checkpoint
                    break
                raise CheckpointError(
                    f"--resume: {self.path} line {i + 1} is damaged; restore the file, or "
                    "delete it (the learning curve restarts) and rerun with --resume"
                ) from None
        return records

    def write(self, record: dict[str, Any]) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:  # O_NOFOLLOW: never appended through a symlink
            fd = os.open(self.path, flags, 0o644)
            with os.fdopen(fd, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as e:
            raise write_error(self.path, e) from e
        for sink in self.sinks:
            sink(record)

    def close(self) -> None:
        """Close the sinks that can be (event files); the JSONL needs nothing."""
        for sink in self.sinks:
            getattr(sink, "close", lambda: None)()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
