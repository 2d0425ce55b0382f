"""``lowrank_mlp``: LoSA's side network with every side layer a channel mixer (Table 3).

The LoSA paper's "Low-rank MLP" adaptor-function ablation: Eq. 3's residual chain over the
selected blocks with Eq. 4 applied along the channels only (no token mixing, so no
Eq. 5 alternation). Same options (rank, layers, alpha_init, start, taps), same
zero-initialised W_u (a fresh network outputs its y_0, b_L by default: the linear probe),
same per-layer count 2rD + r + D + 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from losa_cache.side.losa import LosaSide, side_inputs_of
from losa_cache.side.registry import register_side

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = ["LowRankMlpSide"]


@register_side("lowrank_mlp")
class LowRankMlpSide(LosaSide):
    """LoSA's chain with channel mixers only."""

    @classmethod
    def layer_kinds(cls, config: SideConfig) -> tuple[str, ...]:
        return ("channel",) * len(side_inputs_of(config))
