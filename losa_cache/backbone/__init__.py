"""Frozen ViT backbones: names, weights, preprocessing and block outputs.

Block outputs come from timm's ``forward_intermediates`` (no hooks), with prefix
(CLS/register) tokens kept and put first, i.e. in the model's own token order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import nn

from losa_cache.backbone.registry import ALIASES, create_architecture, describe, resolve_name
from losa_cache.backbone.vivit import (
    VIDEO_ALIASES,
    ViViT,
    check_clip,
    is_video_state,
    load_video_state,
    video_alias,
)
from losa_cache.backbone.weights import (
    WeightsError,
    load_checkpoint,
    load_state,
    load_weights,
    read_state,
    weights_sha256,
    weights_source,
)
from losa_cache.checks import require_range
from losa_cache.store.schema import token_layout

__all__ = [
    "ALIASES",
    "VIDEO_ALIASES",
    "Backbone",
    "WeightsError",
    "create_backbone",
    "describe",
    "load_checkpoint",
    "resolve_name",
]

PREPROCESS_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


@dataclass
class Backbone:
    """A frozen ViT with its preprocessing and weight fingerprint."""

    model: nn.Module
    name: str
    source: str
    preprocess: dict[str, Any]
    sha256: str = ""
    #: how clips were sampled (video: stride, clip protocol), set by extraction; features
    #: depend on it as on the preprocessing, so it is part of the fingerprint
    sampling: dict[str, Any] = field(default_factory=dict)
    _pruned_to: int | None = field(default=None, repr=False)

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.model.patch_embed.grid_size)  # type: ignore[return-value]

    @property
    def video(self) -> bool:
        """Whether inputs are clips (B, C, F, H, W) rather than images."""
        return isinstance(self.model, ViViT)

    @property
    def clip_frames(self) -> int:
        """Frames per input clip (1 for images)."""
        return self.model.frames if isinstance(self.model, ViViT) else 1

    @property
    def time_steps(self) -> int:
        """Token frames: clip frames / tubelet depth (1 for images)."""
        return self.model.time_steps if isinstance(self.model, ViViT) else 1

    @property
    def tokens(self) -> int:
        return self.prefix_tokens + self.time_steps * self.grid[0] * self.grid[1]

    def fingerprint(self) -> dict[str, Any]:
        """What must match for two feature sets to be interchangeable."""
        video = {}
        if isinstance(self.model, ViViT):
            m = self.model
            video = {"frames": m.frames, "tubelet": m.tubelet, "inflation": m.inflation}
            video |= self.sampling
        return {
            "model": self.name,
            "weights_sha256": self.sha256,
            "weights_source": self.source,
            **{k: _jsonable(self.preprocess[k]) for k in PREPROCESS_KEYS},
            **video,
        }

    def token_layout(self) -> dict[str, Any]:
        tubelet = self.model.tubelet if isinstance(self.model, ViViT) else 1
        return token_layout(self.prefix_tokens, self.grid, self.time_steps, tubelet)

    def transform(self) -> Any:
        """timm's eval transform for this backbone's (possibly overridden) data config."""
        return create_transform(**self.preprocess, is_training=False)

    def prune(self, layers: list[int]) -> None:
        """Drop blocks after the last needed one, and the final norm/head (never used)."""
        self.model.prune_intermediate_layers(indices=list(layers), prune_norm=True, prune_head=True)
        self._pruned_to = max(layers)

    @torch.inference_mode()
    def intermediates(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """Block outputs (B, T, D) for the 0-based block indices ``layers``, prefix first."""
        outs = self.model.forward_intermediates(
            x,
            indices=list(layers),
            return_prefix_tokens=True,
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return [_with_prefix(o) for o in outs]


def _with_prefix(out: Any) -> torch.Tensor:
    if isinstance(out, tuple):
        spatial, prefix = out
        return spatial if prefix is None else torch.cat([prefix, spatial], dim=1)
    return out


def _jsonable(v: Any) -> Any:
    return [float(x) if isinstance(x, float) else x for x in v] if isinstance(v, tuple) else v


def create_backbone(
    model: str,
    checkpoint: str | None = None,
    pretrained: bool = False,
    random_init: bool = False,
    seed: int = 0,
    preprocess: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    frames: int | None = None,
    inflation: str = "central",
) -> Backbone:
    """Build a frozen, eval-mode backbone with weights from exactly one source.

    A ViViT alias (``vivit_*``) takes ``frames`` (default: the alias's clip length) and
    ``inflation`` (``central`` | ``average``); image models refuse ``frames``.
    """
    require_range("seed", seed, 0, integer=True, kind=True)  # and within 64 bits, as torch seeds
    va = video_alias(model)
    if va is None and frames is not None:
        raise ValueError(
            f"--frames is for video backbones; {model} is an image model "
            f"(video: {', '.join(VIDEO_ALIASES)})"
        )
    name = resolve_name(va.image if va else model)
    source = weights_source(name, checkpoint, pretrained, random_init)
    torch.manual_seed(seed)  # random-init is deterministic, so resumed runs match
    net = create_architecture(va.image if va else model)
    state = _read_checkpoint(checkpoint) if va and source == "checkpoint" else None
    video_state = state if state is not None and is_video_state(state) else None
    if state is not None and video_state is None:
        load_state(net, state, str(checkpoint))  # an image checkpoint, read once
    elif state is None:
        load_weights(net, name, source, checkpoint)
    sha = weights_sha256(net)
    net.reset_classifier(0)
    cfg = resolve_data_config({}, model=net)
    cfg.update({k: v for k, v in (preprocess or {}).items() if v is not None})
    unknown = set(cfg) - set(PREPROCESS_KEYS)
    for k in unknown:
        cfg.pop(k)
    _fit_input_size(net, name, tuple(cfg["input_size"]))
    if va is not None:
        check_clip(frames or va.frames, va.tubelet, inflation)
        net = ViViT(net, frames=frames or va.frames, tubelet=va.tubelet, inflation=inflation)
        if video_state is not None:
            load_video_state(net, video_state, str(checkpoint))
        sha = weights_sha256(net)  # tubelet kernel and temporal embeddings included
    net.eval().requires_grad_(False).to(device)
    return Backbone(
        model=net,
        name=va.name if va else name,
        source=_source_label(source, checkpoint, seed),
        preprocess=cfg,
        sha256=sha,
    )


def _read_checkpoint(checkpoint: str | None) -> dict[str, torch.Tensor] | None:
    """The tensors of a state-dict checkpoint; None for .npz or a missing file.

    (load_weights reads those itself, and names a missing file.)
    """
    if checkpoint is None or checkpoint.lower().endswith(".npz"):
        return None
    from pathlib import Path

    return read_state(checkpoint) if Path(checkpoint).is_file() else None


def _fit_input_size(net: nn.Module, name: str, input_size: tuple[int, ...]) -> None:
    """Resize the patch grid (position embeddings resampled) when the input size is changed.

    timm ViTs refuse any other image size by default; ``set_input_size`` is timm's own way.
    """
    size = tuple(int(v) for v in input_size[-2:])
    if size == tuple(net.patch_embed.img_size):
        return
    patch = tuple(net.patch_embed.patch_size)
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(
            f"input size {size[0]}x{size[1]} is not a multiple of {name}'s "
            f"{patch[0]}x{patch[1]} patches; pick --input-size as a multiple of {patch[0]}"
        )
    net.set_input_size(img_size=size)


def _source_label(source: str, checkpoint: str | None, seed: int) -> str:
    if source == "checkpoint":
        return f"checkpoint:{checkpoint}"
    return f"random-init:seed={seed}" if source == "random-init" else source


def timm_version() -> str:
    return timm.__version__
