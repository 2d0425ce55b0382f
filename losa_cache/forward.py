"""The backbone forward pass extraction runs: one pass computes every requested tap.

It is timm's ``VisionTransformer.forward_intermediates`` written out (patch embed,
position embedding with prefix tokens, patch drop, norm_pre, then the blocks), so block
outputs are bit-identical to it, with no hooks: a block whose ``attn``/``mlp`` branch is
wanted runs its own submodules in the order ``timm.models.vision_transformer.Block``
does (``x + a`` first, then ``+ m``), which is again the same arithmetic as ``block(x)``.

Tap conventions (see :mod:`losa_cache.store.taps`): blocks 0-based as timm; ``sum:k``
is 1-based over blocks, G_k = z0 + b_1 + ... + b_k, accumulated in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from losa_cache.store import schema as S


def supports_taps(model: nn.Module) -> bool:
    """Whether ``model`` has the timm ViT parts :func:`forward_taps` runs."""
    parts = ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks")
    return all(hasattr(model, p) for p in parts)


def check_branches(model: nn.Module, layers: Sequence[int]) -> None:
    """``attn``/``mlp`` taps need timm's standard pre-norm ``Block`` (two residual adds)."""
    parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    for b in layers:
        block = model.blocks[b]
        if not all(hasattr(block, p) for p in parts):
            raise ValueError(
                f"block {b} is a {type(block).__name__}, not timm's pre-norm Block: the attn "
                "and mlp taps need x + attn + mlp blocks; extract --taps without attn,mlp"
            )


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """z0 (B, T, D), prefix tokens first: the tokens entering block 0."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def branches(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attn branch, mlp branch, block output) of one pre-norm block, as block(x) computes."""
    a = block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    h = x + a
    m = block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
    return a, m, h + m


@torch.inference_mode()
def forward_taps(
    model: nn.Module, x: torch.Tensor, layers: Sequence[int], taps: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Every array of ``taps`` for images ``x``: {array path (schema.tap_array): (B, T, D)}.

    ``layers`` are the 0-based blocks of the per-block taps; sums come out in fp32, the
    rest in the compute dtype. Blocks after the deepest one needed are not run.
    """
    kinds = {S.tap_kind(t) for t in taps}
    ks = sorted(int(t.split(":", 1)[1]) for t in taps if S.tap_kind(t) == "sum")
    split = {b for b in layers if kinds & {"attn", "mlp"}}
    keep = set(layers) if kinds & set(S.PER_BLOCK_TAPS) else set()
    last = max([*keep, *(k - 1 for k in ks), -1])
    out: dict[str, torch.Tensor] = {}
    h = embed(model, x)  # (B, T, D)
    if "embed" in kinds:
        out[S.tap_array("embed")] = h
    total = h.float() if ks else None  # G_0 = z0, fp32
    for i in range(last + 1):
        block = model.blocks[i]
        if i in split:
            a, m, h = branches(block, h)
            if "attn" in kinds:
                out[S.tap_array("attn", i)] = a
            if "mlp" in kinds:
                out[S.tap_array("mlp", i)] = m
        else:
            h = block(h)
        if "blocks" in kinds and i in keep:
            out[S.tap_array("blocks", i)] = h
        if total is not None:
            total = total + h.float()
            if i + 1 in ks:
                out[S.tap_array(f"sum:{i + 1}")] = total
    return out
