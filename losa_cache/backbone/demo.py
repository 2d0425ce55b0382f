"""The embedded demo backbone: a small ViT trained by the project itself on CIFAR-10.

Architecture only; the trained weights ship as package data
(``losa_cache/assets/demo_vit.safetensors``) and are rebuilt by
``pipelines/train_demo_backbone.py`` (fixed seed).
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

DEMO_MODEL = "losa_demo_vit"
DEMO_WEIGHTS = "demo_vit.safetensors"

#: Preprocessing the demo backbone was trained with (timm pretrained_cfg keys).
DEMO_CFG = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2470, 0.2435, 0.2616),
    "num_classes": 10,
    "first_conv": "patch_embed.proj",
    "classifier": "head",
    "architecture": DEMO_MODEL,
}

DEMO_ARCH = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0)


@register_model
def losa_demo_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT with 4x4 patches on 32 px (8x8 grid + CLS = 65 tokens, width 128, depth 6)."""
    if pretrained:
        raise ValueError(
            f"{DEMO_MODEL} has no timm hub weights; its trained weights ship with losa-cache "
            "and are loaded by losa_cache.backbone.create_backbone()"
        )
    hub_only = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only"}
    args = {**DEMO_ARCH, "num_classes": 10}
    args.update({k: v for k, v in kwargs.items() if k not in hub_only})
    model = VisionTransformer(**args)
    model.pretrained_cfg = dict(DEMO_CFG, num_classes=args["num_classes"])
    return model
