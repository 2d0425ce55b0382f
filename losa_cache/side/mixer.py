"""LoSA's low-rank mixer (Eq. 4) applied along the channel, token, or space/time axes.

    g(x) = alpha * W_u GeLU(W_d x)           (Eq. 4)
    g_token(x) = g_spatial(x) + g_temporal(x) (Eq. 6, video)

W_d: n -> r and W_u: r -> n both carry biases; alpha is one learned scalar. So one
adaptor over an axis of size n has 2rn + r + n + 1 parameters (paper: "2rd + 1 ...
biases would add another r + d"). W_u and its bias start at zero, so g(x) = 0 and
the side network starts as the identity on b_L (the linear probe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelMixer",
    "LowRankAdaptor",
    "TokenMixer",
    "VideoTokenMixer",
    "adaptor_params",
    "token_major",
]


def adaptor_params(size: int, rank: int) -> int:
    """Parameters of one :class:`LowRankAdaptor` over an axis of ``size``: 2rn + r + n + 1."""
    return 2 * rank * size + rank + size + 1


class LowRankAdaptor(nn.Module):
    """Eq. 4 along one axis: the last (:meth:`forward`) or the one before (:meth:`along`).

    alpha is folded into the tiny W_u and its bias, (alpha W_u) h + alpha b_u: backward
    then keeps only the input and the (..., r) bottleneck, not the (..., n) output that
    alpha * (W_u h + b_u) would also save for alpha's gradient.
    """

    def __init__(self, size: int, rank: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(size, rank)  # W_d, default (Kaiming-uniform) init
        self.up = nn.Linear(rank, size)  # W_u, zero init -> g == 0 at step 0
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(..., n) -> (..., n)."""
        h = F.gelu(self.down(x))  # (..., r)
        return F.linear(h, self.alpha * self.up.weight, self.alpha * self.up.bias)

    def along(self, x: Tensor) -> Tensor:
        """(..., n, m) -> (..., n, m), mixing axis -2 by W x, a matmul on ``x`` as it lies."""
        h = torch.matmul(self.down.weight, x)  # (..., r, m)
        h = F.gelu(h + self.down.bias.to(h.dtype)[:, None])
        out = torch.matmul(self.alpha * self.up.weight, h)  # (..., n, m)
        return out + (self.alpha * self.up.bias).to(out.dtype)[:, None]


def token_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (B, T, D) in ``dtype``, laid out token-major, (T, B, D) in memory.

    In that layout token mixing is one (r, T) x (T, B*D) matmul on a view and channel
    mixing a matmul on (T*B, D): nothing is ever transposed into a copy, forward or
    backward. The one copy made here replaces the cast to the compute dtype."""
    if x.dtype == dtype and x.transpose(0, 1).is_contiguous():
        return x
    B, T, D = x.shape
    out = torch.empty((T, B, D), dtype=dtype, device=x.device).transpose(0, 1)
    return out.copy_(x)  # (B, T, D), strides (D, B*D, 1)


def _flat_view(x: Tensor) -> tuple[Tensor, bool]:
    """(T, B, D) ``x.transpose(0, 1)`` when that is contiguous (token-major), else ``x``."""
    t = x.transpose(0, 1)
    return (t, True) if t.is_contiguous() else (x, False)


class ChannelMixer(nn.Module):
    """g_channel: mixes the D channels of each token. (B, T, D) -> (B, T, D)."""

    kind = "channel"

    def __init__(self, dim: int, rank: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.adaptor = LowRankAdaptor(dim, rank, alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        t, major = _flat_view(x)  # token-major: linear over (T, B, D), a view
        out = self.adaptor(t)
        return out.transpose(0, 1) if major else out  # (B, T, D)


class TokenMixer(nn.Module):
    """g_token for images: mixes all T tokens (prefix included) per channel."""

    kind = "token"

    def __init__(self, tokens: int, rank: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.adaptor = LowRankAdaptor(tokens, rank, alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        t, major = _flat_view(x)
        if not major:  # (B, T, D) as stored: a broadcast matmul (folds x into a copy)
            return self.adaptor.along(x)
        T, B, D = t.shape
        return self.adaptor.along(t.view(T, B * D)).view(T, B, D).transpose(0, 1)


class VideoTokenMixer(nn.Module):
    """g_token for video (Eq. 6): g_spatial + g_temporal over frame-major tokens.

    Tokens are ``prefix + frames x spatial``. g_spatial mixes the spatial tokens of each
    frame (the image :class:`TokenMixer`'s map over the grid, shared by all frames),
    g_temporal the frames at each spatial position (one map shared by all positions).
    Prefix tokens are not spatiotemporal, so g_token is zero on them: they pass through
    this layer by the residual of Eq. 3 and are refined by the channel layers only.
    ``temporal=False`` drops g_temporal (the ablation: frames never mix in the side network).
    """

    kind = "token"

    def __init__(
        self,
        prefix: int,
        frames: int,
        spatial: int,
        rank: int,
        alpha_init: float = 1.0,
        temporal: bool = True,
    ) -> None:
        super().__init__()
        self.prefix, self.frames, self.spatial = prefix, frames, spatial
        self.spatial_adaptor = LowRankAdaptor(spatial, rank, alpha_init)
        self.temporal_adaptor = LowRankAdaptor(frames, rank, alpha_init) if temporal else None

    @staticmethod
    def count_params(frames: int, spatial: int, rank: int, temporal: bool = True) -> int:
        """Learned parameters: one adaptor over the grid, plus one over the frames."""
        return adaptor_params(spatial, rank) + (adaptor_params(frames, rank) if temporal else 0)

    def forward(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        v = x[:, self.prefix :]  # (B, F*S, D), a view
        mixed = self.spatial_adaptor.along(v.unflatten(1, (self.frames, self.spatial)))
        mixed = mixed.reshape(B, -1, D)  # (B, F*S, D)
        if self.temporal_adaptor is not None:
            temporal = self.temporal_adaptor.along(v.reshape(B, self.frames, -1))  # (B, F, S*D)
            mixed = mixed + temporal.view(B, -1, D)
        prefix = mixed.new_zeros(B, self.prefix, D)  # (B, P, D): no token update for prefix
        return torch.cat([prefix, mixed], dim=1)  # (B, T, D)
