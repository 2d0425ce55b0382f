"""The runs of a pass: each a model + optimizer + schedule built exactly as ``train()`` does.

Same-shape runs fed the same batch may step together: their parameters are stacked
(differentiably, so each run keeps its own leaf tensors, optimizer and schedule) and the
network runs once under ``torch.func.vmap``. Measured on this project's CPU runner
(2 cores, vit_test / vit_micro sizes, 2 to 8 models): vmap 0.5-0.9x the speed of a
loop, a hand-written stacked-bmm LoSA 0.66-0.89x; CPU steps here are bound by memory
traffic, which stacking does not reduce. So ``auto`` loops on CPU; on CUDA (where small
models are bound by kernel launches and vmap can win) it times both on the first batch
of every shape group and keeps the faster. The loop is bit-identical to training alone;
vmap agrees up to float rounding.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from losa_cache.side import SideConfig, create_side
from losa_cache.sweep.config import RunSpec
from losa_cache.train.optim import build_optimizer, build_scheduler

__all__ = ["Member", "ShapeGroup", "use_amp"]


def use_amp(amp: str, device: torch.device) -> bool:
    """The trainer's rule: bf16 autocast on CUDA unless told otherwise."""
    return amp == "bf16" or (amp == "auto" and device.type == "cuda")


class Member:
    """One run being trained: set up like ``train()``'s ``_build_model``."""

    def __init__(self, spec: RunSpec, side: SideConfig, train_rows: int, labels: np.ndarray,
                 device: torch.device) -> None:
        cfg = spec.train
        self.spec, self.side, self.device, self.labels = spec, side, device, labels
        self.plan = cfg.plan(train_rows)
        self.batch, self.steps = int(self.plan["batch_size"]), int(self.plan["steps"])
        self.smoothing = cfg.label_smoothing
        self.amp = use_amp(cfg.amp, device)
        torch.manual_seed(cfg.seed)
        self.model = create_side(side).to(device)
        self.opt = build_optimizer(self.model, cfg.optimizer, float(self.plan["lr"]),
                                   float(self.plan["weight_decay"]), cfg.momentum)
        self.sched = build_scheduler(self.opt, int(self.plan["warmup_steps"]), self.steps)
        self.step, self.status, self.train_images = 0, "training", 0
        self._loss = torch.zeros((), device=device)
        self._n = 0
        self.train_loss: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "training" and self.step < self.steps

    def batch_labels(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.labels[rows]).to(self.device)

    def after_step(self, loss: torch.Tensor, n: int) -> None:
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.train_images += n
        self._loss += loss.detach() * n
        self._n += n

    def check(self) -> None:
        """Once per tick (one sync): a non-finite loss stops this run only."""
        if not self._n:
            return
        value = float(self._loss) / self._n
        if not np.isfinite(value):
            self.status = "diverged"
        self.train_loss = value
        self._loss.zero_()
        self._n = 0
        if self.status == "training" and self.step >= self.steps:
            self.status = "trained"

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step,
                "status": self.status, "train_images": self.train_images,
                "train_loss": self.train_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.status = state["step"], state["status"]
        self.train_images, self.train_loss = state["train_images"], state["train_loss"]


def _loss(m: Member, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=m.smoothing)


class ShapeGroup:
    """Runs with one side config fed by one consumer: stepped in a loop or under vmap."""

    def __init__(self, members: Sequence[Member], mode: str) -> None:
        self.members, self.mode = list(members), mode
        self.timing: dict[str, float] = {}
        self._base = copy.deepcopy(self.members[0].model).to("meta")
        self._names = [n for n, _ in self.members[0].model.named_parameters()]

    def step(self, feats: dict[int, torch.Tensor], rows: np.ndarray) -> None:
        active = [m for m in self.members if m.active]
        if not active:
            return
        if self.mode == "auto":
            cuda = active[0].device.type == "cuda"
            self.mode = self.choose(active, feats, rows) if cuda else "loop"
        if self.mode == "vmap" and len(active) > 1:
            self._vmap_step(active, feats, rows)
        else:
            for m in active:
                self._loop_step(m, feats, rows)

    def _loop_step(self, m: Member, feats: dict, rows: np.ndarray) -> None:
        labels = m.batch_labels(rows)
        with torch.autocast(m.device.type, dtype=torch.bfloat16, enabled=m.amp):
            logits = m.model(feats)  # (B, C)
        loss = _loss(m, logits, labels)
        m.opt.zero_grad(set_to_none=True)
        loss.backward()
        m.after_step(loss, len(rows))

    def _logits(self, active: Sequence[Member], feats: dict) -> torch.Tensor:
        named = [dict(m.model.named_parameters()) for m in active]
        params = {n: torch.stack([p[n] for p in named]) for n in self._names}
        call = lambda p, x: functional_call(self._base, p, (x,))
        with torch.autocast(active[0].device.type, dtype=torch.bfloat16, enabled=active[0].amp):
            return vmap(call, in_dims=(0, None), randomness="different")(params, feats)

    def _vmap_step(self, active: Sequence[Member], feats: dict, rows: np.ndarray) -> None:
        logits = self._logits(active, feats)  # (M, B, C)
        losses = [_loss(m, logits[i], m.batch_labels(rows)) for i, m in enumerate(active)]
        for m in active:
            m.opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for m, loss in zip(active, losses, strict=True):
            m.after_step(loss, len(rows))

    def choose(self, active: Sequence[Member], feats: dict, rows: np.ndarray) -> str:
        """Time forward + backward both ways on throwaway copies; keep the faster."""
        if len(active) < 2:
            return "loop"
        try:
            clones = [_clone(m) for m in active]
            self.timing = {"loop": _time(lambda: [_fwd_bwd(c.model(feats), c, rows)
                                                  for c in clones]),
                           "vmap": _time(lambda: _fwd_bwd_stack(self, clones, feats, rows))}
        except RuntimeError as e:  # an op without a batching rule: loop
            self.timing = {"vmap_error": str(e)[:200]}  # type: ignore[dict-item]
            return "loop"
        return "vmap" if self.timing["vmap"] < self.timing["loop"] else "loop"


def _clone(m: Member) -> Member:
    c = copy.copy(m)
    c.model = copy.deepcopy(m.model)
    return c


def _fwd_bwd(logits: torch.Tensor, m: Member, rows: np.ndarray) -> None:
    m.model.zero_grad(set_to_none=True)
    _loss(m, logits, m.batch_labels(rows)).backward()


def _fwd_bwd_stack(group: ShapeGroup, clones: Sequence[Member], feats: dict,
                   rows: np.ndarray) -> None:
    logits = group._logits(clones, feats)
    sum(_loss(m, logits[i], m.batch_labels(rows)) for i, m in enumerate(clones)).backward()


def _time(fn: Any, reps: int = 2) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps
