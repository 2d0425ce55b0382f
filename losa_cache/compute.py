"""Backbone compute as the LoSA paper counts it: multiply-accumulates, beside FLOPs.

The paper's "GFLOPs" are GMACs (ViT-g/14 at 224 px: 267.4; ViT-B/16: 17.6). Everything
here counts MACs from the architecture's own layer sizes (no weights, works on the meta
device); FLOPs = 2 x MACs, as torch's FlopCounterMode counts a matmul.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

#: What :func:`vit_macs` counts, for every report that shows its numbers.
MACS_COUNTED = (
    "multiply-accumulates of the patch embedding and, per block, qkv, attention scores "
    "(QK^T), attention x V, output projection and both MLP layers; norms, softmax, GELU, "
    "layer scale, residual adds and the classifier head are not counted"
)


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one image's forward, by part (see :data:`MACS_COUNTED`)."""

    patch_embed: int
    qkv: int
    attention: int
    proj: int
    mlp: int
    blocks: int

    @property
    def total(self) -> int:
        return self.patch_embed + self.qkv + self.attention + self.proj + self.mlp


def vit_macs(net: torch.nn.Module, upto_block: int | None = None) -> MacCount:
    """MACs of one image (or clip) through patch embed and blocks 0..upto_block (default: all).

    ``upto_block=-1`` counts the patch embedding alone (what the ``embed`` tap needs). A
    ViViT counts every token frame (clip frames / tubelet depth) and its t x p x p kernel.
    """
    grid = net.patch_embed.grid_size
    patches = grid[0] * grid[1] * getattr(net, "time_steps", 1)
    tokens = patches + net.num_prefix_tokens
    proj = net.patch_embed.proj
    embed = patches * proj.in_channels * math.prod(proj.kernel_size) * net.embed_dim
    last = len(net.blocks) - 1 if upto_block is None else upto_block
    blocks = list(net.blocks)[: last + 1]
    qkv = attention = out = mlp = 0
    for block in blocks:
        attn, fc1, fc2 = block.attn, block.mlp.fc1, block.mlp.fc2
        width = attn.qkv.out_features // 3  # heads x head_dim
        qkv += tokens * attn.qkv.in_features * attn.qkv.out_features
        attention += 2 * tokens * tokens * width  # QK^T, then attention x V
        out += tokens * attn.proj.in_features * attn.proj.out_features
        mlp += tokens * (fc1.in_features * fc1.out_features + fc2.in_features * fc2.out_features)
    return MacCount(embed, qkv, attention, out, mlp, len(blocks))


def vit_flops(net: torch.nn.Module, upto_block: int | None = None) -> int:
    """Forward FLOPs (2 x MACs) of one image through patch embed and blocks 0..upto_block."""
    return 2 * vit_macs(net, upto_block).total


def backbone_cost(net: torch.nn.Module, upto_block: int | None = None) -> dict[str, Any]:
    """GMACs and GFLOPs per image, labelled, with the parts and what is counted."""
    macs = vit_macs(net, upto_block)
    return {
        "gmacs_per_image": macs.total / 1e9,
        "gflops_per_image": 2 * macs.total / 1e9,
        "blocks_run": macs.blocks,
        "macs_by_part": {k: v for k, v in asdict(macs).items() if k != "blocks"},
        "counted": MACS_COUNTED,
        "note": "GMACs are what the LoSA paper's tables call GFLOPs; GFLOPs = 2 x GMACs",
    }


def measure_matmul_flops(device: torch.device, seconds: float = 0.3) -> tuple[float, str]:
    """Achieved matmul FLOP/s on ``device`` in the dtype extraction would use there."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return 2 * n**3 * reps / elapsed, str(dtype).removeprefix("torch.")
