"""Recompute a block's activations in backward instead of keeping them.

``torch.utils.checkpoint.checkpoint`` does this, but it is wrapped to be skipped by
``torch.compile``, and that wrapper imports ``torch._dynamo`` and sympy on its first call
(as does ``torch.autograd.grad`` given output gradients): 70-85 MB of RSS, a tenth of
MIST's 700 MB device budget, for a graph compiler eager training never uses.
:func:`recompute` is the mechanism of torch's non-reentrant checkpoint on its public API,
``torch.autograd.graph.saved_tensors_hooks``: in forward the tensors autograd saves are
replaced by their position; the first time backward asks for one, ``fn`` runs again
under the forward's autocast state and its saved tensors stand in, in order. The backward
pass itself is untouched, so gradients are bit-identical to the checkpoint's. ``fn`` must
be deterministic (no dropout: the RNG state is not replayed). Under ``torch.compile``,
where dynamo is loaded anyway and knows torch's checkpoint, torch's checkpoint is used.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import checkpoint

__all__ = ["recompute"]


def recompute(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` holding only ``x`` for backward (see the module docstring)."""
    if torch.compiler.is_compiling():
        return checkpoint(fn, x, use_reentrant=False)
    dev = x.device.type
    autocast = (
        dev,
        torch.get_autocast_dtype(dev),
        torch.is_autocast_enabled(dev),
        torch.is_autocast_cache_enabled(),
    )
    kept, needs_grad = x.detach(), x.requires_grad
    holders: list[weakref.ref[_Holder]] = []  # autograd owns them: freed once used

    def pack(_: Tensor) -> _Holder:
        holders.append(weakref.ref(holder := _Holder()))
        return holder

    def unpack(holder: _Holder) -> Tensor:
        if holder.tensor is None:  # this block's first unpack: run it again
            refill = iter(holders)
            with (
                torch.enable_grad(),
                torch.autocast(*autocast),
                saved_tensors_hooks(lambda t: _fill(next(refill)(), t), _unused),
            ):
                fn(kept.detach().requires_grad_(needs_grad))
            assert next(refill, None) is None, "the recomputation saved other tensors"
        return holder.tensor

    with saved_tensors_hooks(pack, unpack):
        return fn(x)


class _Holder:
    """One saved tensor's place; the tensor is filled in by the recomputation."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self) -> None:
        self.tensor: Tensor | None = None


def _fill(holder: _Holder | None, t: Tensor) -> None:
    if holder is not None:  # None: autograd has used and freed that one
        holder.tensor = t


def _unused(_: None) -> Tensor:
    raise AssertionError("the recomputation's own graph is never run backward")
