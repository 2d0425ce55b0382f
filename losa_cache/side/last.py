"""``last``: low-rank attention side-tuning on cached block outputs (our reading of LAST,
Tang et al.; MIST's Table 1 baseline).

LAST's own paper is not in our papers folder; MIST describes it as "a low-rank attention
side network" whose attention has an extremely low Q/K/V width. Our reading, on LoSA's
residual chain (so it starts where the other side networks start): per selected block
i (increasing), the side state attends over that block's output::

    y_0 = b_L
    y_i = y_{i-1} + W_up Attn(W_q LN_q(y_{i-1}), W_k LN_kv(b_i), W_v LN_kv(b_i))

Q, K, V project D -> r (``--rank``, one head), W_up projects r -> D and starts at zero
(with its bias), so a fresh network outputs b_L exactly: the linear probe. Attention runs
over all T tokens of b_i, prefix tokens included. The head reads the last y.

Learned parameters per side layer (LayerNorms and biases included, head excluded):
4 D r + 3 r + 5 D (:func:`layer_params`). ViT-B/16 (D 768), every block, r 16:
12 x 53,040 = 636,480 (0.64 M) against MIST's printed 0.66 M for LAST, and 0.13 GMACs
per image against its printed 0.15 G (edge).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from losa_cache.fields import check_fields, metadata, option
from losa_cache.side.base import SideNetwork, wider_than
from losa_cache.side.registry import register_side

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["LastOptions", "LastSide", "LowRankCrossAttention", "layer_params"]

DEFAULT_RANK = 64  # TrainConfig's and SideConfig's default --rank


@dataclass(frozen=True)
class LastOptions:
    """The :class:`SideConfig` fields LAST reads, with their help and range."""

    layers: tuple[int, ...] = field(
        default=(), metadata=metadata("0-based blocks b_i the side layers attend over.")
    )
    rank: int = option(DEFAULT_RANK, "last: Q/K/V width r of each low-rank attention.", min=1)

    def __post_init__(self) -> None:
        check_fields(self)


def layer_params(dim: int, rank: int) -> int:
    """Learned parameters of one side layer: 4 D r + 3 r + 5 D."""
    return 4 * dim * rank + 3 * rank + 5 * dim


class LowRankCrossAttention(nn.Module):
    """The side state (queries) attends over a block output (keys, values) at width r:
    (B, T, D), (B, T, D) -> (B, T, D) update, zero at initialisation."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, rank)
        self.kv = nn.Linear(dim, 2 * rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: Tensor, b: Tensor) -> Tensor:
        q = self.q(self.norm_q(y))  # (B, T, r)
        k, v = self.kv(self.norm_kv(b)).chunk(2, dim=-1)  # each (B, T, r)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])  # (B,1,T,r)
        return self.up(out[:, 0])  # (B, T, D)


@register_side("last")
class LastSide(SideNetwork):
    """One low-rank cross-attention per block of ``config.layers``, chained on y_0 = b_L."""

    options = LastOptions
    sizes = ("rank",)

    def __init__(self, config: SideConfig) -> None:
        super().__init__(config)
        self.side = nn.ModuleList(
            LowRankCrossAttention(config.dim, config.rank) for _ in config.layers
        )

    @classmethod
    def check_config(cls, config: SideConfig) -> None:
        super().check_config(config)
        if not config.layers:
            raise ValueError("last needs at least one layer; use method='linear' for none")
        wider_than("rank", config.rank, {"width D": config.dim}, DEFAULT_RANK)

    @classmethod
    def count_learned_params(cls, config: SideConfig) -> int:
        return len(config.layers) * layer_params(config.dim, config.rank)

    @classmethod
    def blocks(cls, config: SideConfig) -> tuple[int, ...]:
        return tuple(sorted({*config.layers, config.last_layer}))

    def forward_features(self, features: Mapping[int, Tensor]) -> Tensor:
        y = self.block(features, self.config.last_layer)  # (B, T, D), y_0 = b_L
        for index, attend in zip(self.config.layers, self.side, strict=True):
            y = y + attend(y, self.block(features, index))  # (B, T, D)
        return y
