"""The classifier head: pool -> LayerNorm -> dropout -> Linear.

The paper does not specify its classifier; this is the usual ViT probe head. Its
parameters are *not* counted as learned side-network parameters, as in the paper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["ClassifierHead", "head_params", "pool_tokens"]


def pool_tokens(x: Tensor, pool: str, prefix_tokens: int) -> Tensor:
    """(B, T, D) -> (B, D): the first prefix token ('cls') or the mean of the rest ('mean')."""
    if pool == "cls":
        return x[:, 0]  # (B, D)
    if pool == "mean":
        return x[:, prefix_tokens:].mean(dim=1)  # (B, D)
    raise ValueError(f"pool must be 'cls' or 'mean' here, got {pool!r}")


class ClassifierHead(nn.Module):
    """Pool the side network's output tokens and classify them."""

    def __init__(
        self, dim: int, num_classes: int, pool: str, prefix_tokens: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.pool = pool
        self.prefix_tokens = prefix_tokens
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    @classmethod
    def from_config(cls, config: SideConfig) -> ClassifierHead:
        return cls(
            config.dim,
            config.num_classes,
            config.resolved_pool,
            config.prefix_tokens,
            config.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) tokens -> (B, num_classes) logits."""
        pooled = pool_tokens(x, self.pool, self.prefix_tokens)  # (B, D)
        return self.fc(self.drop(self.norm(pooled)))  # (B, C)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype


def head_params(config: SideConfig) -> int:
    """Head parameters (LayerNorm + Linear), computed without building the head."""
    return 2 * config.dim + (config.dim + 1) * config.num_classes
