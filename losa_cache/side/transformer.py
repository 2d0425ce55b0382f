"""``transformer``: an LST-style side transformer (Sung et al. 2022; LoSA Table 3, row 1).

Per selected block i (increasing), on LoSA's residual chain (Eq. 3's shape):

    y_0 = b_L
    z   = W_down (b_i + y_{i-1})                       (D -> h)
    z   = z + Attn(LN(z));  z = z + MLP(LN(z))         (one pre-norm layer at width h)
    y_i = y_{i-1} + W_up z                             (h -> D)

The head reads the last y. W_up and its bias start at zero, so a fresh network outputs
b_L exactly (training starts from the linear probe, as ``losa`` does). The MLP is 4h
wide; the layer has ``attention_heads(h)`` heads (64 channels each where h allows it).
Attention runs over all T tokens, prefix tokens included.

Learned parameters per side layer (biases and LayerNorms included, head excluded):
12h^2 + 2Dh + 14h + D (:func:`layer_params`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from losa_cache.fields import check_fields, metadata
from losa_cache.side.base import SideNetwork
from losa_cache.side.registry import register_side

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["SideTransformer", "TransformerOptions", "attention_heads", "layer_params"]

MLP_RATIO = 4
HEAD_DIM = 64


@dataclass(frozen=True)
class TransformerOptions:
    """The :class:`SideConfig` fields the side transformer reads, with their help and range."""

    layers: tuple[int, ...] = field(
        default=(), metadata=metadata("0-based blocks b_i the side layers read, increasing.")
    )
    hidden: int = field(
        default=64,
        metadata=metadata(
            "Hidden width h of the side transformer (down-projection D -> h).", min=1
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self)


def attention_heads(hidden: int) -> int:
    """Heads of a side layer at width ``hidden``: the most heads of >= 64 channels that
    divide it (1 below 128)."""
    k = max(1, hidden // HEAD_DIM)
    while hidden % k:
        k -= 1
    return k


def layer_params(dim: int, hidden: int) -> int:
    """Learned parameters of one side layer: 12h^2 + 2Dh + 14h + D."""
    return 12 * hidden * hidden + 2 * dim * hidden + 14 * hidden + dim


class PreNormLayer(nn.Module):
    """A pre-norm transformer layer (attention + 4h MLP) at width h: (B, T, h) -> (B, T, h)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.heads = attention_heads(hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, MLP_RATIO * hidden)
        self.fc2 = nn.Linear(MLP_RATIO * hidden, hidden)

    def attention(self, x: Tensor) -> Tensor:
        B, T, H = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, H // self.heads)  # (B, T, 3, k, H/k)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, k, T, H/k)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, k, T, H/k)
        return self.proj(out.transpose(1, 2).reshape(B, T, H))  # (B, T, H)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))  # (B, T, H)


class LadderLayer(nn.Module):
    """down -> pre-norm layer -> up (zero-initialised): (B, T, D) -> (B, T, D) update."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.layer = PreNormLayer(hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.layer(self.down(x)))  # (B, T, D)


@register_side("transformer")
class SideTransformer(SideNetwork):
    """One ladder layer per block of ``config.layers``, chained on y_0 = b_L."""

    options = TransformerOptions
    sizes = ("hidden",)

    def __init__(self, config: SideConfig) -> None:
        super().__init__(config)
        self.ladder = nn.ModuleList(LadderLayer(config.dim, config.hidden) for _ in config.layers)

    @classmethod
    def check_config(cls, config: SideConfig) -> None:
        super().check_config(config)
        if not config.layers:
            raise ValueError("transformer needs at least one layer; use method='linear' for none")

    @classmethod
    def count_learned_params(cls, config: SideConfig) -> int:
        return len(config.layers) * layer_params(config.dim, config.hidden)

    @classmethod
    def blocks(cls, config: SideConfig) -> tuple[int, ...]:
        return tuple(sorted({*config.layers, config.last_layer}))

    def forward_features(self, features: Mapping[int, Tensor]) -> Tensor:
        y = self.block(features, self.config.last_layer)  # (B, T, D), y_0 = b_L
        for index, g in zip(self.config.layers, self.ladder, strict=True):
            y = y + g(self.block(features, index) + y)  # (B, T, D)
        return y
