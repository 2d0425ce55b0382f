"""``mlp_only`` and ``attention_only``: fine-tune only the blocks' MLP or attention layers.

The LoSA paper's Table 7 rows "Finetune only mlp" / "Finetune only attention" (after
Touvron et al., its [58]): the text says "finetuning only the attention or MLP layers"
(Sec. 4), so these train the ``mlp`` (fc1, fc2) or ``attn`` (qkv, proj) modules of every
block, weights and biases, and not the LayerNorms in front of them (norm1/norm2 are
modules of their own, not part of either layer). The table's rounded counts cannot tell:
on ViT-g/14 the 40 blocks' norms are 0.11 M of 692.4 M (mlp) and 317.4 M (attention),
printed as 700 and 320.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from losa_cache.baselines.methods import BaselineMethod, register_baseline

__all__ = ["ATTENTION_ONLY", "MLP_ONLY", "block_part_names"]


def block_part_names(net: nn.Module, part: str) -> list[str]:
    """Parameter names of every block's ``part`` module (``mlp`` or ``attn``)."""
    pattern = re.compile(rf"blocks\.\d+\.{re.escape(part)}\.")
    names = [n for n, _ in net.named_parameters() if pattern.match(n)]
    if not names:
        raise ValueError(
            f"this {type(net).__name__} has no blocks.N.{part} parameters: "
            f"{part}-only fine-tuning needs a timm ViT; use another baseline for it"
        )
    return names


def _part(part: str) -> Any:
    return lambda net, cfg: block_part_names(net, part)


MLP_ONLY = register_baseline(BaselineMethod("mlp_only", _part("mlp")))
ATTENTION_ONLY = register_baseline(BaselineMethod("attention_only", _part("attn")))
