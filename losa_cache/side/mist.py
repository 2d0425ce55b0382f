"""``mist``: MIST's low-rank attention edge network (LAE) on one gathered map.

Minimal Interaction Separated Tuning (../shared/papers/mist-separated-tuning.txt). The
server sends one map per image, the gather (Eq. 6, 1-based k as in the paper and the
store's ``sum:k`` tap)::

    G_k = z0 + z_1 + ... + z_k        z0: tokens entering block 0, z_i: output of block i

and the device trains the edge network on it (Eq. 7-8)::

    x_0 = G_k
    x_j = x_{j-1} + f_j(LayerNorm(x_{j-1}))     j = 1..edge_blocks (4), f = low-rank attention
    logits = head(x_last)                        (the shared ClassifierHead)

Low-rank attention: self-attention whose Q, K, V are projected D -> ``width`` (split over
``heads``) and whose output is projected ``width`` -> D, all with biases.

Choices the paper leaves open (its equations are blank in our copy):

* ``width``: the text says "hidden dimension equals 16 for feature dimension 768", which is
  the default. The tables' 0.38 M parameters fit a width of 32 better: for ViT-B/16
  (D 768), 4 blocks, LayerNorm and biases counted, head excluded,
  width 16 -> 206,016 (0.21 M), width 32 -> 402,816 (0.40 M); 8 blocks double that, as
  Table 4's 0.76 M does. ``--width 32`` comes closest to the tables' size and matches
  their edge MACs (Table 1: 0.09 G): width 32 -> 0.087 G, width 16 -> 0.044 G per image
  (Q/K/V, attention and output projections plus the head; benchmarks/mist.py counts them).
* The output projection starts at zero, so every block is the identity and a fresh
  network is the linear probe on its input map (LoSA's rule, Table 6 of that paper).
* k: picked on the validation split among ``k_candidates``; the paper prints only that N is
  one of three, so the default is ``thirds`` = round(N/3), round(2N/3), N (4, 8, 12 for
  ViT-B); ``gather_k`` fixes one k (default N, the sum of all blocks).
* Ablations (Tables 3 and 4) are configs, see :data:`ABLATIONS`: gather only (the head on
  G_k: ``edge_blocks=0``), LAE only (on the last block output: ``gather='last'``), and
  the block function ``mlp`` (D -> 2*width -> D, GeLU: the same parameters as attention,
  as Table 4 says) or ``dwconv`` (3x3 depthwise conv over the patch grid, 10 D
  parameters: 4 blocks of ViT-B = 0.03 M as in Table 4 without the LayerNorms; prefix
  tokens see only the kernel's centre, as an isolated pixel would).

Input: ``forward`` reads the map under the key :func:`input_key` (``"sum:k"``, or the last
block's 0-based index for ``gather='last'``), which ``taps(config)``/``blocks(config)``
declare; given instead ``"embed"`` and blocks ``0..k-1`` it gathers them itself (fp32
accumulation, :func:`gather`). The training feed reads ``sum:k`` from a store that holds
it, and from one that holds ``embed`` and blocks 0..k-1 instead sums those itself
(:mod:`losa_cache.train.keys`), so either store trains MIST.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losa_cache.fields import check_fields, option
from losa_cache.side._recompute import recompute
from losa_cache.side.base import SideNetwork, wider_than
from losa_cache.side.registry import register_side

if TYPE_CHECKING:
    from losa_cache.side.config import SideConfig

__all__ = [
    "ABLATIONS",
    "BLOCK_FNS",
    "GATHERS",
    "MistOptions",
    "MistSide",
    "candidate_ks",
    "edge_block_params",
    "gather",
    "gather_k",
    "input_key",
    "k_candidates",
]

BLOCK_FNS = ("attention", "mlp", "dwconv")
GATHERS = ("sum", "last")
DWCONV_KERNEL = 3

#: The paper's ablations (Tables 3 and 4) as SideConfig overrides of ``method='mist'``;
#: Table 3's first row (neither) is ``method='linear'``.
ABLATIONS: dict[str, dict[str, Any]] = {
    "mist": {},
    "gather_only": {"edge_blocks": 0},
    "lae_only": {"gather": "last"},
    "mlp": {"block_fn": "mlp"},
    "dwconv": {"block_fn": "dwconv"},
}


@dataclass(frozen=True)
class MistOptions:
    """The :class:`SideConfig` fields MIST reads, with their help and range."""

    width: int = option(
        16,
        "LAE: total Q/K/V width (16 in the paper's text for D 768; 32 matches its tables' 0.38 M).",
        min=1,
    )
    heads: int = option(1, "LAE: attention heads sharing --width (must divide it).", min=1)
    edge_blocks: int = option(
        4, "LAE: edge network blocks (0: gather only, the head on the map).", min=0
    )
    block_fn: str = option(
        "attention",
        "LAE block function: attention (MIST) | mlp | dwconv (the paper's Table 4 ablations).",
        choices=BLOCK_FNS,
    )
    gather: str = option(
        "sum",
        "MIST input: sum (G_k = z0 + b_1..b_k, a sum:k tap) | last "
        "(the last block output: the 'LAE only' ablation).",
        choices=GATHERS,
    )
    gather_k: int | None = option(
        None, "MIST: k of G_k, 1-based over blocks (default: the depth N, every block).", min=1
    )
    k_candidates: str = option(
        "thirds", "MIST: the k chosen among on val: thirds (N/3, 2N/3, N) or a list like 4,8,12."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.width % self.heads:
            raise ValueError(
                f"--heads {self.heads} must divide --width {self.width}; "
                "pick a width that is a multiple of the heads"
            )
        if self.k_candidates != "thirds":
            _parse_ks(self.k_candidates)


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise ValueError(
            f"--k-candidates {text!r} is neither 'thirds' nor a list of integers like 4,8,12"
        ) from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k-candidates {text!r}: give k >= 1 (1-based over blocks)")
    return ks


# ---------------------------------------------------------------- the map MIST reads


def gather(z0: Tensor, blocks: Sequence[Tensor], k: int) -> Tensor:
    """G_k = z0 + blocks[0] + ... + blocks[k-1] in fp32 (``blocks[i]``: 0-based block i)."""
    if not 1 <= k <= len(blocks):
        raise ValueError(f"gather k={k} needs 1 <= k <= {len(blocks)} (the blocks given)")
    acc = z0.to(torch.float32).clone()  # (B, T, D)
    for b in blocks[:k]:
        acc += b.to(torch.float32)
    return acc


def gather_k(config: SideConfig) -> int:
    """The configured k (1-based); N when unset."""
    return config.num_layers if config.gather_k is None else config.gather_k


def k_candidates(config: SideConfig) -> tuple[int, ...]:
    """The k to choose among on val, sorted: thirds = round(N/3), round(2N/3), N."""
    return candidate_ks(config.k_candidates, config.num_layers)


def candidate_ks(spec: str, depth: int) -> tuple[int, ...]:
    """``--k-candidates`` for a ``depth``-block backbone: thirds, or the listed k."""
    if spec == "thirds":
        return tuple(sorted({max(1, round(depth / 3)), max(1, round(2 * depth / 3)), depth}))
    return _parse_ks(spec)


def input_key(config: SideConfig) -> str | int:
    """The map the network reads: the store tap ``"sum:k"``, or b_L's 0-based index."""
    return config.last_layer if config.gather == "last" else f"sum:{gather_k(config)}"


# ---------------------------------------------------------------- block functions


class LowRankAttention(nn.Module):
    """Self-attention with Q, K, V of total width ``width`` << D; output projection zeroed."""

    def __init__(self, dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * width)
        self.proj = nn.Linear(width, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3,B,h,T,w/h)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, h, T, w/h)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


class LowRankMLP(nn.Module):
    """D -> 2*width -> D with GeLU (Table 4's MLP: attention's parameter count)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * width)
        self.fc2 = nn.Linear(2 * width, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, T, D)


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv over the (side x side) patch grid; prefix tokens: centre tap only."""

    def __init__(self, dim: int, prefix_tokens: int, side: int) -> None:
        super().__init__()
        self.prefix, self.side = prefix_tokens, side
        self.conv = nn.Conv2d(dim, dim, DWCONV_KERNEL, padding=DWCONV_KERNEL // 2, groups=dim)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, d = x.shape
        grid = x[:, self.prefix :].transpose(1, 2).reshape(b, d, self.side, self.side)
        out = self.conv(grid).flatten(2).transpose(1, 2)  # (B, side*side, D)
        centre = self.conv.weight[:, 0, DWCONV_KERNEL // 2, DWCONV_KERNEL // 2]  # (D,)
        head = x[:, : self.prefix] * centre + self.conv.bias  # (B, P, D)
        return torch.cat([head, out], dim=1)  # (B, T, D)


class EdgeBlock(nn.Module):
    """x + f(LayerNorm(x)): the identity at init (f's output layer is zero)."""

    def __init__(self, config: SideConfig) -> None:
        super().__init__()
        d = config.dim
        self.norm = nn.LayerNorm(d)
        if config.block_fn == "attention":
            self.fn: nn.Module = LowRankAttention(d, config.width, config.heads)
        elif config.block_fn == "mlp":
            self.fn = LowRankMLP(d, config.width)
        else:
            self.fn = DepthwiseConv(d, config.prefix_tokens, _grid_side(config))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return x + recompute(self.branch, x)  # (B, T, D)
        return x + self.branch(x)  # (B, T, D)

    def branch(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


def _grid_side(config: SideConfig) -> int:
    return math.isqrt(config.tokens - config.prefix_tokens)


def edge_block_params(config: SideConfig) -> int:
    """Parameters of one edge block: LayerNorm 2D plus the block function's, biases in."""
    d, w = config.dim, config.width
    fn = {
        "attention": 4 * w * d + 3 * w + d,  # qkv D*3w + 3w, proj w*D + D
        "mlp": 4 * w * d + 2 * w + d,  # fc1 D*2w + 2w, fc2 2w*D + D
        "dwconv": DWCONV_KERNEL**2 * d + d,
    }[config.block_fn]
    return 2 * d + fn


# ---------------------------------------------------------------- the network


@register_side("mist")
class MistSide(SideNetwork):
    """LAE on G_k (or on b_L with ``gather='last'``), then the classifier head."""

    options = MistOptions
    sizes = ("width", "edge_blocks")

    @staticmethod
    def expand(settings: dict[str, Any], depth: int) -> list[dict[str, Any]]:
        """Without ``gather_k``, a run per candidate k (chosen among on val: ``train``
        keeps the best, a sweep keeps them all); else the run itself."""
        get = lambda name: settings.get(name, getattr(MistOptions, name))
        if get("gather") != "sum" or get("gather_k") is not None:
            return [settings]
        return [{**settings, "gather_k": k} for k in candidate_ks(get("k_candidates"), depth)]

    def __init__(self, config: SideConfig) -> None:
        super().__init__(config)
        self.edge = nn.ModuleList(EdgeBlock(config) for _ in range(config.edge_blocks))

    @classmethod
    def check_config(cls, config: SideConfig) -> None:
        super().check_config(config)
        if config.gather_k is not None and config.gather_k > config.num_layers:
            raise ValueError(
                f"--gather-k {config.gather_k} is out of range: k counts blocks "
                f"from 1, 1..{config.num_layers} here"
            )
        wider_than("width", config.width, {"width D": config.dim}, MistOptions.width)
        bad = [k for k in k_candidates(config) if k > config.num_layers]
        if bad:
            raise ValueError(
                f"--k-candidates {bad} exceed the depth {config.num_layers}; k counts blocks from 1"
            )
        if config.block_fn == "dwconv" and config.edge_blocks:
            patches = config.tokens - config.prefix_tokens
            if config.frames != 1 or _grid_side(config) ** 2 != patches:
                raise ValueError(
                    f"--block-fn dwconv needs a square patch grid of one frame "
                    f"({patches} patch tokens, frames={config.frames}); use "
                    "attention or mlp"
                )

    @classmethod
    def count_learned_params(cls, config: SideConfig) -> int:
        return config.edge_blocks * edge_block_params(config)

    @classmethod
    def blocks(cls, config: SideConfig) -> tuple[int, ...]:
        """b_L for ``gather='last'``; else none (G_k is the ``sum:k`` tap)."""
        return (config.last_layer,) if config.gather == "last" else ()

    @classmethod
    def taps(cls, config: SideConfig) -> tuple[str, ...]:
        """``sum:k`` (the feed sums embed + blocks 0..k-1 where a store lacks it)."""
        return () if config.gather == "last" else (f"sum:{gather_k(config)}",)

    def input_map(self, features: Mapping[Any, Tensor]) -> Tensor:
        """The (B, T, D) map LAE reads: the ``sum:k`` tap, or gathered from embed + blocks."""
        key = input_key(self.config)
        if isinstance(key, int):
            return self.block(features, key)
        if key not in features:
            k = gather_k(self.config)
            if "embed" not in features:
                raise KeyError(
                    f"mist reads the {key!r} tap (or 'embed' plus blocks 0..{k - 1});"
                    f" got {sorted(map(str, features))}: extract with --taps {key}"
                )
            blocks = [self.block(features, i) for i in range(k)]
            return gather(features["embed"], blocks, k).to(self.dtype)
        return self._checked(features[key], key)

    def _checked(self, x: Tensor, key: str) -> Tensor:
        expected = (self.config.tokens, self.config.dim)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{key} has shape {tuple(x.shape)}; expected (B, {expected[0]}, "
                f"{expected[1]}) = (B, tokens, dim) from the config"
            )
        return x.to(self.dtype)

    def forward_features(self, features: Mapping[Any, Tensor]) -> Tensor:
        x = self.input_map(features)  # (B, T, D)
        for block in self.edge:
            x = block(x)
        return x
