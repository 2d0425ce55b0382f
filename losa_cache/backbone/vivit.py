"""ViViT (Arnab et al., 2021), unfactorised, built from an image ViT (LoSA, Table 2).

The image model's blocks, prefix tokens and spatial position embeddings are kept unchanged;
the 2D patch embedding is *inflated* to a ``t x p x p`` tubelet embedding ("central frame"
initialisation by default: the 2D filter at the middle tubelet frame, zeros elsewhere, as
ViViT found best; "average": the 2D filter divided by ``t`` at every frame), and learned
temporal position embeddings (zero at init, so the model starts as the image ViT applied
per tubelet) are added to every spatial token. Tokens are ``prefix + frames x grid``,
frame-major, prefix first: the layout :class:`~losa_cache.side.mixer.VideoTokenMixer` reads.
Inputs are clips ``(B, C, F, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import nn

#: Tubelet initialisations (``--inflation``).
INFLATIONS = ("central", "average")


@dataclass(frozen=True)
class VideoAlias:
    """A ViViT name: the image alias it inflates, its clip length and tubelet depth."""

    name: str
    image: str
    frames: int
    tubelet: int
    note: str


VIDEO_ALIASES: dict[str, VideoAlias] = {
    a.name: a
    for a in [
        VideoAlias("vivit_b", "vit_b", 32, 2, "ViViT-B, 32 frames, 2x16x16 tubelets (from vit_b)"),
        VideoAlias("vivit_l", "vit_l", 32, 2, "ViViT-L, 32 frames, 2x16x16 tubelets (from vit_l)"),
        VideoAlias("vivit_h", "vit_h", 32, 2, "ViViT-H, 32 frames, 2x14x14 tubelets (from vit_h)"),
        VideoAlias("vivit_g", "vit_g", 32, 2, "ViViT-g, 32 frames, 2x14x14 tubelets (from vit_g)"),
        VideoAlias("vivit_G", "vit_G", 32, 2, "ViViT-G, 32 frames, 2x14x14 tubelets (from vit_G)"),
        VideoAlias("vivit_e", "vit_e", 32, 2, "ViViT-e, 32 frames, 2x14x14 tubelets (from vit_e)"),
        VideoAlias(
            "vivit_test", "vit_micro", 4, 2, "tiny ViViT for tests: 4 frames of 32 px (vit_micro)"
        ),
        VideoAlias(
            "vivit_demo", "demo", 8, 2, "tiny ViViT from the embedded demo ViT: 8 frames, 32 px"
        ),
    ]
}


def video_alias(model: str) -> VideoAlias | None:
    """The ViViT alias ``model`` names, or None for an image model."""
    return VIDEO_ALIASES.get(model)


def check_clip(frames: int, tubelet: int, inflation: str) -> None:
    """Refuse a clip length, tubelet depth or inflation the model cannot be built with."""
    if tubelet < 1:
        raise ValueError(f"tubelet depth must be >= 1, got {tubelet}")
    if frames < 1 or frames % tubelet:
        raise ValueError(
            f"--frames {frames} is not a positive multiple of the tubelet depth {tubelet}; "
            f"pick a multiple of {tubelet}"
        )
    if inflation not in INFLATIONS:
        raise ValueError(f"unknown inflation {inflation!r}; choose {' or '.join(INFLATIONS)}")


def inflate_kernel(weight: torch.Tensor, tubelet: int, inflation: str) -> torch.Tensor:
    """2D patch kernel (D, C, p, p) -> tubelet kernel (D, C, t, p, p)."""
    if inflation == "average":
        return weight.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
    out = torch.zeros(*weight.shape[:2], tubelet, *weight.shape[2:], dtype=weight.dtype)
    out = out.to(weight.device)
    out[:, :, tubelet // 2] = weight
    return out


class TubeletEmbed(nn.Module):
    """``t x p x p`` tubelets -> tokens (B, F/t, grid, D).

    The kernel is a Conv3d's (``proj.weight`` is (D, C, t, p, p), as ViViT checkpoints hold
    it) but runs as one Conv2d over the frames of each tubelet stacked as channels: the same
    sum, and with ``t = 1`` exactly the image model's patch embedding on every frame.
    """

    def __init__(self, image_embed: nn.Module, tubelet: int, inflation: str) -> None:
        super().__init__()
        proj = image_embed.proj
        if not isinstance(proj, nn.Conv2d) or proj.stride != proj.kernel_size:
            raise ValueError("ViViT needs an image ViT whose patch embedding is one Conv2d")
        self.tubelet = tubelet
        self.patch_size = tuple(proj.kernel_size)
        self.img_size = tuple(image_embed.img_size)
        self.grid_size = tuple(image_embed.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv3d(
            proj.in_channels,
            proj.out_channels,
            (tubelet, *self.patch_size),
            stride=(tubelet, *self.patch_size),
            bias=proj.bias is not None,
            device=proj.weight.device,
        )
        with torch.no_grad():
            self.proj.weight.copy_(inflate_kernel(proj.weight, tubelet, inflation))
            if proj.bias is not None:
                self.proj.bias.copy_(proj.bias)
        self.norm = image_embed.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, frames, H, W = x.shape  # (B, C, F, H, W)
        if self.img_size != (H, W):
            raise ValueError(
                f"frames of {H}x{W} px, but this ViViT takes {self.img_size[0]}x"
                f"{self.img_size[1]}: resize them, or build it with that --input-size"
            )
        t = self.tubelet
        x = x.reshape(B, C, frames // t, t, H, W).transpose(1, 2)  # (B, F/t, C, t, H, W)
        x = x.reshape(B * (frames // t), C * t, H, W)
        w = self.proj.weight.reshape(self.proj.out_channels, C * t, *self.patch_size)
        x = F.conv2d(x, w, self.proj.bias, stride=self.patch_size)  # (B F/t, D, gh, gw)
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B F/t, grid, D)
        return x.reshape(B, frames // t, self.num_patches, -1)


class ViViT(nn.Module):
    """An unfactorised ViViT around an image :class:`VisionTransformer`'s own modules."""

    def __init__(
        self, image: nn.Module, frames: int, tubelet: int = 2, inflation: str = "central"
    ) -> None:
        super().__init__()
        check_clip(frames, tubelet, inflation)
        _check_image(image)
        self.frames, self.tubelet, self.inflation = frames, tubelet, inflation
        self.embed_dim = int(image.embed_dim)
        self.num_prefix_tokens = int(image.num_prefix_tokens)
        self.no_embed_class = bool(image.no_embed_class)
        self.patch_embed = TubeletEmbed(image.patch_embed, tubelet, inflation)
        self.cls_token, self.reg_token, self.pos_embed = (
            image.cls_token,
            image.reg_token,
            image.pos_embed,
        )
        self.temporal_pos_embed = nn.Parameter(
            torch.zeros(1, frames // tubelet, 1, self.embed_dim, device=image.pos_embed.device)
        )
        self.pos_drop, self.patch_drop, self.norm_pre = (
            image.pos_drop,
            image.patch_drop,
            image.norm_pre,
        )
        self.blocks, self.norm = image.blocks, image.norm
        self.fc_norm, self.head_drop, self.head = image.fc_norm, image.head_drop, image.head
        self.num_classes = int(image.num_classes)
        self.pretrained_cfg = dict(image.pretrained_cfg or {})

    @property
    def time_steps(self) -> int:
        """Token frames: clip frames / tubelet depth."""
        return self.frames // self.tubelet

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Only ``num_classes=0`` (no head) is needed: features are what is stored."""
        if num_classes:
            raise ValueError("a ViViT backbone has no classifier here (features only)")
        self.num_classes, self.head = 0, nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (B, C, F, H, W) -> tokens (B, prefix + F/t x grid, D) entering block 0."""
        if x.ndim != 5 or x.shape[2] != self.frames:
            raise ValueError(
                f"ViViT expects clips (B, C, {self.frames}, H, W), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)  # (B, F/t, grid, D)
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        pos = self.pos_embed
        pos_prefix, pos_grid = (None, pos) if self.no_embed_class else _split(pos, prefix)
        x = (x + pos_grid[:, None] + self.temporal_pos_embed).flatten(1, 2)  # (B, F/t*grid, D)
        if pos_prefix is not None:
            prefix = [torch.cat(prefix, dim=1) + pos_prefix] if prefix else []
        x = torch.cat([*prefix, x], dim=1) if prefix else x
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> final tokens (B, T, D), timm's contract: what live baselines (full
        fine-tuning of the ViViT) train through."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NLC",
        intermediates_only: bool = False,
    ) -> Any:
        """timm's ``forward_intermediates`` contract for clips ("NLC" only: tokens are 3D)."""
        if output_fmt != "NLC":
            raise ValueError("ViViT block outputs are token sequences: use output_fmt='NLC'")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        outs = []
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                outs.append(self.norm(x) if norm else x)
        n = self.num_prefix_tokens
        spatial = [y[:, n:] for y in outs]
        if return_prefix_tokens and n:
            outs = list(zip(spatial, [y[:, :n] for y in outs], strict=True))
        else:
            outs = spatial
        return outs if intermediates_only else (self.norm(x), outs)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last wanted one (and the norm/head), as timm does."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0)
        return take


def _split(
    pos: torch.Tensor, prefix: list[torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Class-token position embeddings (timm's default layout) from the spatial ones."""
    n = sum(t.shape[1] for t in prefix)
    return (pos[:, :n] if n else None), pos[:, n:]


def _check_image(image: nn.Module) -> None:
    """ViViT is built from a plain VisionTransformer with absolute position embeddings."""
    if not isinstance(image, VisionTransformer) or image.pos_embed is None:
        raise ValueError(
            f"ViViT inflates a timm VisionTransformer with absolute position embeddings, "
            f"not a {type(image).__name__}; use one of {', '.join(VIDEO_ALIASES)}"
        )
    if getattr(image, "dynamic_img_size", False):
        raise ValueError("ViViT needs a fixed image size (dynamic_img_size=False)")


def is_video_state(state: dict[str, torch.Tensor]) -> bool:
    """A ViViT state dict (tubelet kernel, temporal embeddings), not an image one."""
    return (
        "temporal_pos_embed" in state
        or state.get("patch_embed.proj.weight", torch.empty(0)).ndim == 5
    )


def load_video_state(net: ViViT, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a ViViT checkpoint (tubelet kernel and temporal embeddings included) as it is."""
    from losa_cache.backbone.weights import WeightsError

    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: other frames, tubelet or width
        raise WeightsError(
            f"ViViT checkpoint {where!r} does not fit this model ({net.frames} frames, "
            f"tubelet {net.tubelet}): {e}; pass the --frames it was saved with"
        ) from e
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise WeightsError(
            f"ViViT checkpoint {where!r} does not match the architecture: missing {missing[:5]}, "
            f"unexpected {list(unexpected)[:5]}; is --model the one it was saved from?"
        )
