"""``adaptformer``: AdaptFormer (Chen et al., NeurIPS 2022), a parallel bottleneck adapter
beside every block's MLP (MIST's Table 1 baseline).

Per block, with x the residual stream after the attention (the MLP branch's input)::

    out = x + MLP(LN2(x)) + s * W_up ReLU(W_down x)      (D -> b -> D)

as AdaptFormer's "parallel" option (its adapter reads x, not LN2(x), and has no norm
of its own). ``b`` is ``--rank`` (default 64, AdaptFormer's default), ``s`` is
``--adapter-scale`` (default 0.1, AdaptFormer's). W_down keeps nn.Linear's init, the
biases and W_up start at zero, so a fresh model computes the frozen backbone exactly.
The backbone stays frozen; only the adapters (and the head) learn: per block
2 D b + b + D parameters. MIST's Table 1 prints 0.16 M for ViT-B/16: that is b = 8
(12 x 13,064 = 156,768), with 0.03 GMACs per image as its 17.60 - 17.57 G; the default
b = 64 gives 1,189,632 (1.19 M).

The adapter sits beside the block as hooks (norm2's input is kept, the block's output
gets the adapter's added), so any block with ``norm2`` and ``mlp`` works unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from losa_cache.baselines.methods import BaselineMethod, register_baseline
from losa_cache.fields import check_fields, option

__all__ = ["ADAPTFORMER", "AdaptformerOptions", "ParallelAdapter", "adapter_params"]

ATTR = "adaptformer"  # the adapter's name inside each block


@dataclass(frozen=True)
class AdaptformerOptions:
    """adaptformer's own setting (its bottleneck is the run's ``--rank``)."""

    adapter_scale: float = option(
        0.1,
        "adaptformer: scale s of the parallel adapter's output (bottleneck: --rank).",
        above=0,
    )

    def __post_init__(self) -> None:
        check_fields(self)


def adapter_params(dim: int, bottleneck: int) -> int:
    """Learned parameters of one adapter: 2 D b + b + D."""
    return 2 * dim * bottleneck + bottleneck + dim


class ParallelAdapter(nn.Module):
    """D -> b -> D bottleneck (ReLU), scaled, added to its block's output."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._x: Tensor | None = None  # the block's norm2 input, kept for the output hook

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.up(F.relu(self.down(x)))  # (B, T, D)

    def keep_input(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self._x = args[0]

    def add_output(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        x, self._x = self._x, None
        if x is None:
            raise RuntimeError("adaptformer: the block ran without its norm2")
        return output + self(x)


def _blocks(net: nn.Module) -> list[nn.Module]:
    blocks = list(getattr(net, "blocks", []))
    if not blocks or not all(hasattr(b, "norm2") and hasattr(b, "mlp") for b in blocks):
        raise ValueError(
            f"adaptformer needs a timm ViT whose blocks have norm2 and mlp (this "
            f"{type(net).__name__} has not); use another baseline for it"
        )
    return blocks


def _count(net: nn.Module, cfg: Any) -> int:
    return len(_blocks(net)) * adapter_params(int(net.embed_dim), cfg.rank)


def _attach(net: nn.Module, cfg: Any) -> None:
    for block in _blocks(net):
        adapter = ParallelAdapter(int(net.embed_dim), cfg.rank, cfg.adapter_scale)
        block.add_module(ATTR, adapter)
        block.norm2.register_forward_pre_hook(adapter.keep_input)
        block.register_forward_hook(adapter.add_output)


ADAPTFORMER = register_baseline(
    BaselineMethod(
        "adaptformer",
        trainable=lambda net, cfg: [],
        uses=("rank",),
        options=AdaptformerOptions,
        added_params=_count,
        attach=_attach,
    )
)
