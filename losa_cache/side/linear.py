"""``linear``: the linear probe, no side layers; the head reads the last block b_L.

It is LoSA with zero side layers (Table 5, "Linear Probing (0)"), and what a fresh
``losa`` network computes at step 0. ``config.layers`` is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import Tensor

from losa_cache.side.base import SideNetwork
from losa_cache.side.registry import register_side

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["LinearProbe"]


@register_side("linear")
class LinearProbe(SideNetwork):
    """Head on b_L; zero learned side parameters."""

    @classmethod
    def count_learned_params(cls, config: SideConfig) -> int:
        return 0

    @classmethod
    def blocks(cls, config: SideConfig) -> tuple[int, ...]:
        return (config.last_layer,)

    def forward_features(self, features: Mapping[int, Tensor]) -> Tensor:
        return self.block(features, self.config.last_layer)  # (B, T, D)
