"""A run: one config's model, optimizer, schedule, amp rule, loss, step, state and NaN policy.

``train`` is the engine over one run, ``sweep`` the engine over many: both build runs
here, so a run is set up, stepped, checkpointed, resumed and finished the same way
alone and inside a sweep, and writes the same files into its folder::

    metrics.jsonl   train / eval / test records (learning curves)
    checkpoint.pt   model, optimizer, schedule, RNG, stream position, evaluations
    metrics.json    the final metrics
    adapter.*       the trained side network (complete runs)
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from losa_cache.augment import train_views
from losa_cache.outdir import atomic_write_text, claim_outdir
from losa_cache.side import SideConfig, create_side, head_params
from losa_cache.train import checkpoint as ckpt
from losa_cache.train.config import TrainConfig
from losa_cache.train.feed import keep_mask
from losa_cache.train.keys import side_inputs
from losa_cache.train.loggers import RunInfo, open_logger
from losa_cache.train.optim import build_optimizer, build_scheduler, lr_factor
from losa_cache.train.order import RowOrder, default_buffer_rows
from losa_cache.train.sources import SourceInfo, TaskData

__all__ = [
    "NonFiniteLossError",
    "Run",
    "compile_side",
    "cpu_has_bf16",
    "forward_backward",
    "forward_loss",
    "use_amp",
]

#: What a run folder holds (an earlier version's folder with these is adopted): the
#: files above, MIST's candidates (``k/``), a lora baseline's ``peft/``, a sweep's row.
RUN_FILES = frozenset(
    {
        ckpt.CHECKPOINT,
        ckpt.METRICS,
        ckpt.METRICS_LOG,
        "adapter.json",
        "adapter.safetensors",
        "k",
        "peft",
        "result.json",
    }
)
#: Settings that may change on --resume (the continuation is then no longer exact).
TUNABLE_ON_RESUME = frozenset(
    {"lr", "steps", "epochs", "warmup_steps", "weight_decay", "label_smoothing", "momentum"}
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16
    matmuls run several times faster than fp32; elsewhere oneDNN emulates them, slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: ask oneDNN (it checks the same instructions)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_amp(amp: str, device: torch.device) -> bool:
    """The amp rule (the one place): bf16 autocast when asked, and under ``auto`` on CUDA
    and on CPUs with native bf16 (:func:`cpu_has_bf16`); fp32 elsewhere. Weights and
    optimizer state stay fp32 either way."""
    if amp != "auto":
        return amp == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def compile_side(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module | None:
    """``torch.compile`` of ``model`` for training steps (None: eager). ``auto`` compiles on
    CUDA only, where fusing a side network's many small kernels cuts launches; on this
    project's CPUs it was not measured faster. Compilation happens at the first call."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    return torch.compile(model)


def forward_loss(
    model: torch.nn.Module, feats: Any, labels: torch.Tensor, amp: bool, smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one batch (``feats``: block outputs, or images for a live
    baseline): the forward every training step takes."""
    with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(feats)  # (B, C)
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing), logits


def forward_backward(
    model: torch.nn.Module,
    opt: Any,
    feats: Any,
    labels: torch.Tensor,
    amp: bool,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one batch, gradients in place: a training step up to the
    optimizer's (:meth:`Run.train_step`; the sweep's cost measurement times this too)."""
    loss, logits = forward_loss(model, feats, labels, amp, smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss, logits


class Run:
    """One config being trained, with its own batch order, cadence and output folder."""

    def __init__(
        self,
        cfg: TrainConfig,
        side: SideConfig,
        info: SourceInfo,
        task: TaskData,
        splits: dict[str, str | None],
        split_rows: np.ndarray,
        rows: dict[str, np.ndarray],
        device: torch.device,
        name: str = "",
        model: torch.nn.Module | None = None,
    ) -> None:
        """``split_rows``: the train split's rows (the order's domain); ``rows``: the
        labelled rows of each role (train, val, test); ``model``: a live baseline's
        (backbone + head, fed images), else the side network of ``side`` is built."""
        self.cfg, self.side, self.info, self.task, self.splits = cfg, side, info, task, splits
        self.device, self.name, self.out = device, name or cfg.out, Path(cfg.out)
        self.plan = cfg.plan(len(rows["train"]))
        self.batch, self.steps = int(self.plan["batch_size"]), int(self.plan["steps"])
        self.amp = use_amp(cfg.amp, device)
        torch.manual_seed(cfg.seed)
        self.model = (create_side(side) if model is None else model).to(device)
        # training steps run through this; eval, state and adapters use the module itself
        self.compiled = None if model is not None else compile_side(self.model, cfg.compile, device)
        self.opt = build_optimizer(
            self.model,
            cfg.optimizer,
            float(self.plan["lr"]),
            float(self.plan["weight_decay"]),
            cfg.momentum,
        )
        self.sched = build_scheduler(self.opt, int(self.plan["warmup_steps"]), self.steps)
        self.rng = ckpt.rng_state()  # this run's own RNG (dropout), swapped in per step
        self.layers = side_inputs(self.model)  # feed keys: blocks, taps (a live baseline: images)
        fp16_row = 2 * info.tokens * info.dim * len(self.layers)
        self.order = RowOrder(
            split_rows,
            cfg.shuffle_buffer or default_buffer_rows(self.batch, len(split_rows), fp16_row),
            cfg.seed,
            train_views(getattr(cfg, "views", "all"), info.views),
        )
        self.rows = rows
        self.train_rows = train_rows = rows["train"]
        self.keep = None if np.array_equal(train_rows, split_rows) else keep_mask(train_rows)
        self.position, self.step, self.status = 0, 0, "training"
        self.evals: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.test: dict[str, Any] | None = None
        self.train_images, self.train_seconds, self.lr = 0, 0.0, float(self.plan["lr"])
        self.steady: list | None = None  # [images, seconds] after this process's first interval
        self.error: str | None = None
        self.last_loss: float | None = None
        self.last_img_s: float | None = None  # the last logged interval's (progress bar)
        self.notes: list[str] = []
        self._reset_interval()

    # ------------------------------------------------------------------ start

    def start(self, tunable: frozenset[str] = TUNABLE_ON_RESUME) -> None:
        """Claim the output folder (never the user's files, never through a symlink), then
        resume from its checkpoint or refuse to overwrite one. ``tunable``: the settings
        that may differ from the checkpoint's (a sweep member's: none)."""
        claim_outdir(self.out, "train", proof=(ckpt.CHECKPOINT,), known=RUN_FILES)
        state = self._load_resume_state(tunable)
        if state is not None:
            self._restore(state)
        resume_step = self.step if state is not None else None
        loggers = open_logger(self.cfg.log, RunInfo(self.out, self.cfg.to_dict(), resume_step))
        self.log = ckpt.MetricsLog(self.out, resume_step, loggers)

    def _load_resume_state(self, tunable: frozenset[str]) -> dict[str, Any] | None:
        if not self.cfg.resume:
            if (self.out / ckpt.CHECKPOINT).exists():
                raise ValueError(
                    f"{self.out} already holds a run ({ckpt.CHECKPOINT}); pass "
                    "--resume to continue it, or choose another --out"
                )
            return None
        state = ckpt.load_checkpoint(self.out)
        try:
            saved = TrainConfig.from_dict(state["train_config"]).maths()
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"--resume: {self.out / ckpt.CHECKPOINT} records no valid training config "
                f"({type(e).__name__}); point --out at the run to continue"
            ) from None
        mine = self.cfg.maths()
        fixed = sorted(k for k in mine if mine[k] != saved.get(k) and k not in tunable)
        if fixed:
            raise ValueError(
                f"--resume: {self.out / ckpt.CHECKPOINT} was written by a run "
                f"with different {fixed} ({[saved.get(k) for k in fixed]} there, "
                f"{[mine[k] for k in fixed]} now); use the same values, or "
                "restore that run's own checkpoint"
            )
        tuned = sorted(k for k in mine if mine[k] != saved.get(k))
        if tuned:
            self.notes.append(f"resuming with changed {tuned}: not an exact continuation")
        return state

    def _order_state(self) -> dict[str, int]:
        views = {"views": self.order.view_count} if self.order.view_count else {}
        return {
            "num_rows": len(self.order),
            "seed": self.order.seed,
            "buffer_rows": self.order.buffer_rows,
            "batch_size": self.batch,
            **views,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue exactly where the checkpoint left off."""
        if state["order"] != self._order_state():
            raise ValueError(
                f"cannot resume {self.out}: the batch order differs from the "
                f"checkpoint's ({state['order']} there, {self._order_state()} now)"
            )
        self._check_progress(state)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.position, self.rng = state["step"], state["position"], state["rng"]
        self.evals, self.best = state["evals"], state["best"]
        self.train_images, self.train_seconds = state["train_images"], state["train_seconds"]
        # settings tunable on resume win over the checkpoint's (no-ops when unchanged)
        lr, wd = float(self.plan["lr"]), float(self.plan["weight_decay"])
        self.sched.base_lrs = [lr] * len(self.opt.param_groups)
        factor = lr_factor(self.step, int(self.plan["warmup_steps"]), self.steps)
        for i, group in enumerate(self.opt.param_groups):
            group.update(initial_lr=lr, lr=lr * factor)
            group["weight_decay"] = wd if i == 0 else 0.0
            if "momentum" in group:
                group["momentum"] = self.cfg.momentum
        self.notes.append(f"resumed from step {self.step}")

    def _check_progress(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint whose step or stream position this run cannot have reached
        (edited, or from another run): resuming from it would train on a made-up state."""
        step, position = state.get("step"), state.get("position")
        saved = TrainConfig.from_dict(state["train_config"]).plan(len(self.train_rows))
        most_steps = max(self.steps, int(saved["steps"]))
        epochs = (
            -(-int(step) * self.batch // len(self.train_rows)) + 1 if isinstance(step, int) else 0
        )
        most_rows = epochs * len(self.order)
        ok = (
            isinstance(step, int)
            and isinstance(position, int)
            and 0 <= step <= most_steps
            and step <= position <= most_rows
        )
        if not ok:
            raise ckpt.CheckpointError(
                f"--resume: {self.out / ckpt.CHECKPOINT} holds step {step!r} and position "
                f"{position!r}, which this run cannot have reached (step 0..{most_steps}, "
                f"position step..{most_rows}); the file is damaged or edited: restore it "
                "from a copy, or train again without --resume into a new --out"
            )

    # ------------------------------------------------------------------ stepping

    def eval_rows(self, role: str) -> np.ndarray:
        return self.rows.get(role, np.zeros(0, np.int64))

    @property
    def active(self) -> bool:
        return self.status == "training"

    def labels_of(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.task.labels[rows]).to(self.device, non_blocking=True)

    def train_step(self, feats: dict[int, torch.Tensor], rows: np.ndarray) -> None:
        """One optimizer step on a batch (the loop: bit-identical alone and in a sweep)."""
        labels = self.labels_of(rows)
        with self.own_rng():
            loss, logits = self._forward_backward(feats, labels)
        self.after_step(loss, logits, labels)

    def _forward_backward(
        self, feats: dict[int, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss, logits and gradients of one batch: compiled where asked, and eager from
        the first failure of the compiled network on (one warning, one note)."""
        net = self.model if self.compiled is None else self.compiled
        try:
            loss, logits = forward_backward(
                net, self.opt, feats, labels, self.amp, self.cfg.label_smoothing
            )
        except Exception as e:
            if net is self.model:
                raise
            self.compiled = None
            cause = getattr(e, "inner_exception", None) or e  # dynamo wraps the backend's
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            note = (
                f"--compile {self.cfg.compile}: the compiled side network failed "
                f"({type(cause).__name__}: {first}); training eagerly"
            )
            warnings.warn(note, RuntimeWarning, stacklevel=2)
            self.notes.append(note)
            return self._forward_backward(feats, labels)
        return loss, logits

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """This run's RNG state in, and back out, around its step (only dropout draws)."""
        if self.side.dropout:
            ckpt.set_rng_state(self.rng)
        yield
        if self.side.dropout:
            self.rng = ckpt.rng_state()

    def after_step(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The optimizer step and the interval's metrics (gradients are in place)."""
        self.lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        n = len(labels)
        self.acc_loss += loss.detach() * n
        self.acc_correct += (logits.detach().argmax(1) == labels).sum()
        self.acc_n += n
        if self.device.type == "cpu" and not math.isfinite(float(loss.detach())):
            self.diverge(float(loss.detach()))  # on GPU checked at each flush (no sync)

    def due(self, key: str) -> bool:
        return self.step % int(self.plan[key]) == 0

    def _reset_interval(self) -> None:
        self.acc_loss = torch.zeros((), device=self.device)
        self.acc_correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.acc_n, self.t0 = 0, time.perf_counter()

    def flush(self) -> dict[str, str]:
        """Log the interval's train metrics, stop on a non-finite loss; the bar's postfix."""
        loss_sum = float(self.acc_loss)  # syncs the GPU
        seconds = time.perf_counter() - self.t0
        n = max(1, self.acc_n)
        rec = {
            "kind": "train",
            "step": self.step,
            "loss": loss_sum / n,
            "acc": int(self.acc_correct) / n,
            "lr": self.lr,
            "img_s": self.acc_n / max(seconds, 1e-9),
            "epoch": self.step * self.batch / len(self.train_rows),
            "memory_bytes": ckpt.memory_now(self.device),
        }
        self.log.write(rec)
        self.last_loss, self.last_img_s = rec["loss"], rec["img_s"]
        if self.steady is None:  # the first interval holds start-up (workers, caches): skip it
            self.steady = [0, 0.0]
        else:
            self.steady = [self.steady[0] + self.acc_n, self.steady[1] + seconds]
        self.train_images += self.acc_n
        self.train_seconds += seconds
        self._reset_interval()
        if not math.isfinite(loss_sum):
            self.diverge(loss_sum)
        return {
            "loss": f"{rec['loss']:.4f}",
            "acc": f"{rec['acc']:.3f}",
            "img/s": f"{rec['img_s']:,.0f}",
        }

    def diverge(self, value: float) -> None:
        """NaN policy: this run stops; its last good checkpoint stays (others go on)."""
        if self.status == "diverged":
            return
        self.status = "diverged"
        last = self.last_checkpoint_step()
        kept = (
            f"the last good checkpoint (step {last}) is kept in {self.out / ckpt.CHECKPOINT}"
            f"; lower --lr and rerun with --resume to continue from it"
            if last is not None
            else "no checkpoint had been written yet; lower --lr and start again"
        )
        self.log.write({"kind": "error", "step": self.step, "error": f"loss {value}"})
        self.error = (
            f"loss became {value} by step {self.step} (lr {self.lr:.3g}): training stopped; {kept}"
        )

    def blame_inputs(self, feats: Any, rows: np.ndarray) -> None:
        """A run that diverged on a batch holding NaN/inf features: say so, naming the
        input and the store rows (the lr is not to blame; a lower one would not help)."""
        if self.status != "diverged" or getattr(self, "_blamed", False):
            return
        self._blamed = True
        named = feats.items() if isinstance(feats, dict) else [("images", feats)]
        bad = []
        for key, x in named:
            if not (torch.is_tensor(x) and x.is_floating_point() and len(x) == len(rows)):
                continue
            finite = torch.isfinite(x.reshape(len(x), -1)).all(1).cpu().numpy()
            if not finite.all():
                what = f"block {key}" if isinstance(key, int) else str(key)
                bad.append(
                    f"{what} at store rows {rows[~finite][:5].tolist()}"
                    f"{' ...' if (~finite).sum() > 5 else ''} ({int((~finite).sum())} "
                    "rows of this batch)"
                )
        if bad:
            self.error = (
                f"the input features are not finite (NaN or inf): {'; '.join(bad)}; "
                f"training stopped at step {self.step}. The store holds non-finite "
                "values (the backbone overflowed at extraction): re-extract the store "
                "(e.g. with --precision fp32), or leave those rows out of the split"
            )

    def last_checkpoint_step(self) -> int | None:
        path = self.out / ckpt.CHECKPOINT
        return int(ckpt.load_checkpoint(self.out)["step"]) if path.exists() else None

    # ------------------------------------------------------------------ evaluation

    def record_eval(self, role: str, res: dict[str, Any]) -> None:
        rec = {
            "kind": "eval" if role == "val" else role,
            "split": self.splits[role],
            "step": self.step,
            "acc": res["acc"],
            "loss": res["loss"],
        }
        self.log.write(rec)
        if role == "test":
            self.test = res
            return
        self.evals.append(rec)
        if self.best is None or res["acc"] > self.best["acc"]:
            self.best = {"acc": res["acc"], "step": self.step}
        self.t0 = time.perf_counter()

    def checkpoint(self) -> None:
        ckpt.save_checkpoint(
            self.out,
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": self.rng,
                "position": self.position,
                "order": self._order_state(),
                "train_config": self.cfg.to_dict(),
                "side_config": self.side.to_dict(),
                "evals": self.evals,
                "best": self.best,
                "train_images": self.train_images,
                "train_seconds": self.train_seconds,
            },
        )
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ end

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """metrics.json (and the adapter, when complete); returns the metrics."""
        complete = self.step >= self.steps and self.status != "diverged"
        test = self.test
        metrics = {
            "complete": complete,
            "status": "trained" if complete else self.status,
            "step": self.step,
            "plan": self.plan,
            "method": self.cfg.method,
            "rank": self.cfg.rank,
            "layers": [k for k in self.layers if isinstance(k, int)],
            "inputs": list(self.layers),
            "task": self.task.task,
            "options": {n: getattr(self.side, n) for n in getattr(self.model, "uses", ())},
            "splits": self.splits,
            "evals": self.evals,
            "best_val_acc": self.best and self.best["acc"],
            "best_val_step": self.best and self.best["step"],
            "final_val_acc": self.evals[-1]["acc"] if self.evals else None,
            "final_val_loss": self.evals[-1]["loss"] if self.evals else None,
            "test_acc": test and test["acc"],
            "test_loss": test and test["loss"],
            "learned_params": self.model.num_learned_params(),
            "head_params": head_params(self.side),
            "train_loss": self.last_loss,
            "train_rows": len(self.train_rows),
            "train_images": self.train_images,
            "train_seconds": round(self.train_seconds, 3),
            "images_per_s": self.train_images / self.train_seconds if self.train_seconds else 0,
            "images_per_s_steady": self.steady[0] / self.steady[1]
            if self.steady and self.steady[1]
            else None,
            "buffer_rows": self.order.buffer_rows,
            "device": str(self.device),
            "amp": "bf16" if self.amp else "fp32",
            "compiled": self.compiled is not None,
            "live": self.cfg.live,
            "error": self.error,
            "last_checkpoint": str(self.out / ckpt.CHECKPOINT)
            if self.status == "diverged" and self.last_checkpoint_step() is not None
            else None,
            "out": str(self.out),
            **extra,
            "notes": self.notes + extra.get("notes", []),
        }
        if complete:
            metrics["adapter"] = str(self._save_adapter(metrics))
        atomic_write_text(self.out / ckpt.METRICS, _dumps(metrics))
        self.log.close()
        return metrics

    def _save_adapter(self, metrics: dict[str, Any]) -> Path:
        from losa_cache.adapter import save_adapter

        meta = {
            "fingerprint": self.info.fingerprint,
            "classes": self.task.classes,
            "task": self.task.task,
            "train_config": self.cfg.to_dict(),
            "metrics": _jsonable(metrics),
        }
        if hasattr(self.model, "save_adapter"):  # a live baseline: its own format (+ peft's)
            return self.model.cpu().save_adapter(
                self.out, {**meta, "side_config": self.side.to_dict()}
            )
        return save_adapter(self.out, self.model.cpu(), self.side, meta)


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
