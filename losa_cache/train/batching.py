"""Same-shape runs fed the same batch: stepped in a loop, or together under vmap.

Their parameters are stacked (differentiably, so each run keeps its own leaf tensors,
optimizer and schedule) and the network runs once under ``torch.func.vmap``. Measured on
this project's CPU runner (2 cores, vit_test / vit_micro sizes, 2 to 8 models): vmap
0.5-0.9x the speed of a loop, a hand-written stacked-bmm LoSA 0.66-0.89x; CPU steps here
are bound by memory traffic, which stacking does not reduce. So ``auto`` loops on CPU; on
CUDA (where small models are bound by kernel launches and vmap can win) it times both on
the first batch of every shape group and keeps the faster. The loop is bit-identical to
training alone; vmap agrees up to float rounding.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

if TYPE_CHECKING:
    from losa_cache.train.run import Run

__all__ = ["BATCHING", "ShapeGroup"]

BATCHING = ("auto", "loop", "vmap")


def _loss(m: Run, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=m.cfg.label_smoothing)


class ShapeGroup:
    """Runs with one side config fed by one consumer: stepped in a loop or under vmap."""

    def __init__(self, members: Sequence[Run], mode: str) -> None:
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
                m.train_step(feats, rows)

    def _logits(self, active: Sequence[Run], feats: dict) -> torch.Tensor:
        named = [dict(m.model.named_parameters()) for m in active]
        params = {n: torch.stack([p[n] for p in named]) for n in self._names}
        call = lambda p, x: functional_call(self._base, p, (x,))
        with torch.autocast(active[0].device.type, dtype=torch.bfloat16, enabled=active[0].amp):
            return vmap(call, in_dims=(0, None), randomness="different")(params, feats)

    def _vmap_step(self, active: Sequence[Run], feats: dict, rows: np.ndarray) -> None:
        logits = self._logits(active, feats)  # (M, B, C)
        labels = [m.labels_of(rows) for m in active]
        losses = [_loss(m, logits[i], labels[i]) for i, m in enumerate(active)]
        for m in active:
            m.opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for i, m in enumerate(active):
            m.after_step(losses[i], logits[i], labels[i])

    def choose(self, active: Sequence[Run], feats: dict, rows: np.ndarray) -> str:
        """Time forward + backward both ways on throwaway copies; keep the faster."""
        if len(active) < 2:
            return "loop"
        try:
            clones = [_clone(m) for m in active]
            self.timing = {
                "loop": _time(lambda: [_fwd_bwd(c.model(feats), c, rows) for c in clones]),
                "vmap": _time(lambda: _fwd_bwd_stack(self, clones, feats, rows)),
            }
        except RuntimeError as e:  # an op without a batching rule: loop
            self.timing = {"vmap_error": str(e)[:200]}  # type: ignore[dict-item]
            return "loop"
        return "vmap" if self.timing["vmap"] < self.timing["loop"] else "loop"


def _clone(m: Run) -> Run:
    c = copy.copy(m)
    c.model = copy.deepcopy(m.model)
    return c


def _fwd_bwd(logits: torch.Tensor, m: Run, rows: np.ndarray) -> None:
    m.model.zero_grad(set_to_none=True)
    _loss(m, logits, m.labels_of(rows)).backward()


def _fwd_bwd_stack(group: ShapeGroup, clones: Sequence[Run], feats: dict, rows: np.ndarray) -> None:
    logits = group._logits(clones, feats)
    sum(_loss(m, logits[i], m.labels_of(rows)) for i, m in enumerate(clones)).backward()


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
