"""Write a timm ViT's weights in other checkpoint formats, to test the loaders on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def save_augreg_npz(model: nn.Module, path: Path) -> None:
    """Inverse of timm's ``_load_weights`` for the AugReg (non big_vision) .npz layout."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    hd = dim // heads
    w: dict[str, np.ndarray] = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(model.blocks)):
        p, b = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = b + "MultiHeadDotProductAttention_1/"
        qkv_w = sd[p + "attn.qkv.weight"].reshape(3, dim, dim)
        qkv_b = sd[p + "attn.qkv.bias"].reshape(3, heads, hd)
        for j, n in enumerate(("query", "key", "value")):
            w[f"{mha}{n}/kernel"] = qkv_w[j].T.reshape(dim, heads, hd)
            w[f"{mha}{n}/bias"] = qkv_b[j]
        w[f"{mha}out/kernel"] = (
            sd[p + "attn.proj.weight"].reshape(dim, heads, hd).transpose(1, 2, 0)
        )
        w[f"{mha}out/bias"] = sd[p + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[f"{b}{ln}/scale"] = sd[f"{p}{name}.weight"]
            w[f"{b}{ln}/bias"] = sd[f"{p}{name}.bias"]
        for r in range(2):
            w[f"{b}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{p}mlp.fc{r + 1}.weight"].T
            w[f"{b}MlpBlock_3/Dense_{r}/bias"] = sd[f"{p}mlp.fc{r + 1}.bias"]
    np.savez(path, **w)


def save_all_formats(model: nn.Module, folder: Path) -> dict[str, Path]:
    """The same weights as .npz, .pth (wrapped like a training checkpoint) and .safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    out = {
        "npz": folder / "w.npz",
        "pth": folder / "w.pth",
        "safetensors": folder / "w.safetensors",
    }
    save_augreg_npz(model, out["npz"])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, out["pth"])
    save_file(state, str(out["safetensors"]))
    return out
