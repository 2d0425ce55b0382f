"""Backbone names: short aliases for the ViTs of the LoSA paper, plus any timm ViT.

Architectures only; weights are resolved in :mod:`losa_cache.backbone.weights`.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass

import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from losa_cache.backbone import demo as _demo
from losa_cache.backbone.vivit import VIDEO_ALIASES, ViViT


@dataclass(frozen=True)
class Alias:
    """A short backbone name and what it stands for."""

    name: str
    timm_name: str
    note: str


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias("vit_b", "vit_base_patch16_224.augreg_in21k", "ViT-B/16, AugReg IN-21k"),
        Alias("vit_b_orig", "vit_base_patch16_224.orig_in21k", "ViT-B/16, original IN-21k (VTAB)"),
        Alias("vit_l", "vit_large_patch16_224.augreg_in21k", "ViT-L/16, AugReg IN-21k"),
        Alias("vit_h", "vit_huge_patch14_224.orig_in21k", "ViT-H/14, original IN-21k"),
        Alias("vit_g", "vit_giant_patch14_224", "ViT-g/14, ~1B (weights via --checkpoint)"),
        Alias("vit_G", "vit_gigantic_patch14_224", "ViT-G/14, ~1.8B (weights via --checkpoint)"),
        Alias(
            "vit_e", "losa_vit_enormous_patch14_224", "ViT-e/14, ~3.9B (weights via --checkpoint)"
        ),
        Alias(
            "demo", "losa_demo_vit", "embedded demo ViT trained on CIFAR-10 (ships with losa-cache)"
        ),
        Alias("vit_micro", "losa_micro_vit", "tiny random-architecture ViT for tests (32 px)"),
        Alias("vit_test", "test_vit", "timm's tiny test ViT (160 px, width 64)"),
    ]
}
# ViViT aliases stand for the image ViT they inflate (backbone/vivit.py)
ALIASES |= {
    v.name: Alias(v.name, ALIASES[v.image].timm_name, v.note) for v in VIDEO_ALIASES.values()
}


@register_model
def losa_vit_enormous_patch14_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-e/14 (Chen et al., PaLI): width 1792, depth 56, MLP 15360, 16 heads."""
    _refuse_hub(pretrained, "losa_vit_enormous_patch14_224")
    # 15360 / 1792 is not exact in binary floating point; nudge so int(dim * ratio) == 15360.
    args = dict(
        patch_size=14, embed_dim=1792, depth=56, num_heads=16, mlp_ratio=15360 / 1792 + 1e-9
    )
    model = VisionTransformer(**{**args, **_arch_kwargs(kwargs)})
    # big_vision's preprocessing: 224 px, inputs scaled to [-1, 1]
    model.pretrained_cfg = {
        "architecture": "losa_vit_enormous_patch14_224",
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    return model


@register_model
def losa_micro_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A 4-block, width-32 ViT on 32 px (8x8 patches, 17 tokens): fast enough for unit tests."""
    _refuse_hub(pretrained, "losa_micro_vit")
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)
    model = VisionTransformer(**{**args, **_arch_kwargs(kwargs)})
    model.pretrained_cfg = dict(_demo.DEMO_CFG, architecture="losa_micro_vit")
    return model


def _refuse_hub(pretrained: bool, name: str) -> None:
    if pretrained:
        raise ValueError(f"{name} has no hub weights here: pass --checkpoint FILE")


def _arch_kwargs(kwargs: dict) -> dict:
    """Drop the hub-related keywords timm's factory passes to every entrypoint."""
    return {k: v for k, v in kwargs.items() if k not in _FACTORY_ONLY}


_FACTORY_ONLY = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only"}
# (demo.py filters the same keywords; it cannot import this module without a cycle)


def resolve_name(model: str) -> str:
    """Alias or timm name -> full timm name (with pretrained tag if any)."""
    if model in ALIASES:
        return ALIASES[model].timm_name
    arch = model.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, list(ALIASES) + timm.list_models("*vit*"), n=5)
        raise ValueError(
            f"unknown model {model!r}: not an alias and not a timm model. "
            f"Aliases: {', '.join(sorted(ALIASES))}; closest names: {', '.join(close) or 'none'}."
            " `losa-cache models` lists the aliases."
        )
    tag = model.partition(".")[2]
    tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise ValueError(
            f"unknown tag {tag!r} for {arch}; its tags: {', '.join(tags) or 'none'} "
            f"(or give {arch} alone with --checkpoint FILE or --random-init)"
        )
    return model


def create_architecture(
    model: str, device: str | torch.device = "cpu", frames: int | None = None
) -> torch.nn.Module:
    """Instantiate an architecture (random weights, classifier kept for checkpoint loading).

    ``device='meta'`` builds it without allocating memory (parameter counts of 4B models).
    A ViViT alias gives the inflated model for ``frames``-frame clips (default: the alias's).
    """
    video = VIDEO_ALIASES.get(model)
    if video is not None:
        image = create_architecture(video.image, device)
        return ViViT(image, frames or video.frames, video.tubelet)
    name = resolve_name(model)
    with torch.device(device):
        net = _create(name.split(".")[0], meta=torch.device(device).type == "meta")
    check_vit(name, net)
    if "." in name and getattr(net, "pretrained_cfg", None) is not None:
        # keep the tag's preprocessing (mean/std differ between tags of one architecture)
        net.pretrained_cfg = dict(timm.models.get_pretrained_cfg(name).to_dict(), tag=name)
    return net


def _create(arch: str, meta: bool) -> torch.nn.Module:
    """timm's model; on the meta device without its weight init (no values to draw: the
    init, run through meta kernels, took ~85% of `losa-cache models`)."""
    if meta:
        try:
            return timm.create_model(arch, pretrained=False, weight_init="skip")
        except TypeError:  # a model class without the option (Eva, Beit)
            pass
    return timm.create_model(arch, pretrained=False)


#: What losa-cache reads from a model (see :class:`~losa_cache.backbone.Backbone`).
_NEEDS = ("blocks", "embed_dim", "num_prefix_tokens", "patch_embed", "prune_intermediate_layers")
SUPPORTED = (
    "timm ViTs with patch and prefix (CLS) tokens: VisionTransformer (vit_*, deit_*, "
    "flexivit_*, ...), Eva (eva02_*, ...) and Beit (beit_*) models"
)


def check_vit(name: str, net: torch.nn.Module) -> None:
    """Refuse a model the backbone code cannot read (a CNN, a hierarchical ViT, ...)."""
    missing = [a for a in _NEEDS if not hasattr(net, a)]
    if not hasattr(getattr(net, "patch_embed", None), "grid_size"):
        missing.append("patch_embed.grid_size")
    forward = getattr(net, "forward_intermediates", None)
    if forward is None or "return_prefix_tokens" not in inspect.signature(forward).parameters:
        missing.append("forward_intermediates(return_prefix_tokens=...)")
    if missing:
        raise ValueError(
            f"{name} is a {type(net).__name__}, not a ViT losa-cache can read (it lacks "
            f"{', '.join(dict.fromkeys(missing))}); supported: {SUPPORTED}, or an alias "
            f"({', '.join(sorted(ALIASES))}, see `losa-cache models`)"
        )


def describe(model: str, frames: int | None = None) -> dict:
    """Parameter count and per-image(-or-clip)-layer storage, without loading weights."""
    net = create_architecture(model, device="meta", frames=frames)
    grid = tuple(net.patch_embed.grid_size)
    steps = getattr(net, "time_steps", 1)
    tokens = net.num_prefix_tokens + steps * grid[0] * grid[1]
    dim = net.embed_dim
    return {
        "model": model,
        "timm_name": resolve_name(model),
        "params": sum(p.numel() for n, p in net.named_parameters() if not n.startswith("head")),
        "depth": len(net.blocks),
        "dim": dim,
        "tokens": tokens,
        "prefix_tokens": net.num_prefix_tokens,
        "grid": list(grid),
        "frames": getattr(net, "frames", 1),
        "time_steps": steps,
        "input_size": list(net.pretrained_cfg.get("input_size", (3, *net.patch_embed.img_size))),
        "bytes_per_image_layer_fp16": tokens * dim * 2,
    }
