"""Optimizer and learning-rate schedule of the paper's recipe (Table 12).

The optimizers are torch's own update functions (``torch.optim.adam.adam``,
``torch.optim.sgd.sgd``, which ``torch.optim.AdamW``/``SGD`` call with the same
arguments) behind a small holder of parameter groups and state. ``torch.optim.Optimizer``
imports ``torch._dynamo`` and sympy on its first ``add_param_group``/``step`` (its methods
are wrapped to be skipped by ``torch.compile``): 70-85 MB of RSS, a tenth of MIST's 700 MB
budget, for a graph compiler eager training never uses. Updates, ``state_dict`` and
``load_state_dict`` match torch's optimizers and ``LambdaLR`` bit for bit and in format,
so checkpoints written with either resume with either.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

__all__ = ["LeanAdamW", "LeanSGD", "LrSchedule", "build_optimizer", "build_scheduler", "lr_factor"]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak lr at ``step``: linear warmup, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= total:
        return 0.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only; biases, norms and the alphas are left alone."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class _LeanOptimizer:
    """Parameter groups and per-parameter state in ``torch.optim.Optimizer``'s layout."""

    defaults: dict[str, Any]

    def __init__(self, groups: list[dict], defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups = [defaults | g | {"params": list(g["params"])} for g in groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: ...}, "param_groups": [...]}``, parameters by index."""
        index, groups = {}, []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({k: v for k, v in group.items() if k != "params"} | {"params": ids})
        params = [p for g in self.param_groups for p in g["params"]]
        state = {index[id(p)]: dict(self.state[p]) for p in params if p in self.state}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("loaded state dict has groups of other sizes than this optimizer's")
        self.state = defaultdict(dict)
        for group, old in zip(self.param_groups, saved, strict=True):
            for p, i in zip(group["params"], old["params"], strict=True):
                if i in state_dict["state"]:
                    self.state[p] = {k: _like(p, k, v) for k, v in state_dict["state"][i].items()}
            group.update({k: copy.deepcopy(v) for k, v in old.items() if k != "params"})


def _like(p: torch.Tensor, key: str, value: Any) -> Any:
    """A loaded state value on ``p``'s device and dtype (``step`` stays as saved), as
    ``torch.optim.Optimizer.load_state_dict`` does."""
    if not isinstance(value, torch.Tensor) or key == "step":
        return value
    return value.to(device=p.device, dtype=p.dtype if value.is_floating_point() else None)


class LeanAdamW(_LeanOptimizer):
    """``torch.optim.AdamW(groups, lr=lr)``: its defaults, its update function."""

    def __init__(self, groups: list[dict], lr: float) -> None:
        super().__init__(
            groups,
            {
                "lr": lr,
                "betas": (0.9, 0.999),
                "eps": 1e-8,
                "weight_decay": 1e-2,
                "amsgrad": False,
                "maximize": False,
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "decoupled_weight_decay": True,
            },
        )

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:  # as torch.optim.Adam: step a CPU scalar
                    self.state[p] = {
                        "step": torch.tensor(0.0, dtype=_scalar_dtype()),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }
            st = [self.state[p] for p in params]
            adam(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in st],
                [s["exp_avg_sq"] for s in st],
                [],
                [s["step"] for s in st],
                foreach=g["foreach"],
                capturable=g["capturable"],
                differentiable=g["differentiable"],
                fused=g["fused"],
                has_complex=any(torch.is_complex(p) for p in params),
                decoupled_weight_decay=True,
                amsgrad=g["amsgrad"],
                beta1=g["betas"][0],
                beta2=g["betas"][1],
                lr=g["lr"],
                weight_decay=g["weight_decay"],
                eps=g["eps"],
                maximize=g["maximize"],
            )


class LeanSGD(_LeanOptimizer):
    """``torch.optim.SGD(groups, lr=lr, momentum=momentum)``: its defaults, its update."""

    def __init__(self, groups: list[dict], lr: float, momentum: float) -> None:
        super().__init__(
            groups,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": 0,
                "weight_decay": 0,
                "nesterov": False,
                "maximize": False,
                "foreach": None,
                "differentiable": False,
                "fused": None,
            },
        )

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            bufs = [self.state[p].get("momentum_buffer") for p in params] if g["momentum"] else []
            sgd(
                params,
                [p.grad for p in params],
                bufs,
                has_sparse_grad=False,
                foreach=g["foreach"],
                fused=g["fused"],
                weight_decay=g["weight_decay"],
                momentum=g["momentum"],
                lr=g["lr"],
                dampening=g["dampening"],
                nesterov=g["nesterov"],
                maximize=g["maximize"],
            )
            for p, buf in zip(params if g["momentum"] else [], bufs, strict=True):
                self.state[p]["momentum_buffer"] = buf


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


Optimizer = LeanAdamW | LeanSGD


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return LeanSGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return LeanAdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


class LrSchedule:
    """``torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)``: each group's lr is its
    initial lr times ``lr_lambda(steps taken)``; its ``state_dict`` keys."""

    def __init__(self, opt: Optimizer, lr_lambda: Callable[[int], float]) -> None:
        self.optimizer, self.lr_lambda = opt, lr_lambda
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in opt.param_groups]
        self.last_epoch, self._step_count = -1, 0
        self.step()

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * self.lr_lambda(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self._last_lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lrs": self.base_lrs,
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_last_lr": self._last_lr,
            "lr_lambdas": [None],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also a ``LambdaLR``'s (its other keys are its own bookkeeping)."""
        self.base_lrs, self.last_epoch = list(state_dict["base_lrs"]), state_dict["last_epoch"]
        self._step_count = state_dict.get("_step_count", self.last_epoch + 1)
        self._last_lr = list(state_dict.get("_last_lr", self.base_lrs))


def build_scheduler(opt: Optimizer, warmup: int, total: int) -> LrSchedule:
    return LrSchedule(opt, lambda step: lr_factor(step, warmup, total))
