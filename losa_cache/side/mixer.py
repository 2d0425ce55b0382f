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
]


def adaptor_params(size: int, rank: int) -> int:
    """Parameters of one :class:`LowRankAdaptor` over an axis of ``size``: 2rn + r + n + 1."""
    return 2 * rank * size + rank + size + 1


class LowRankAdaptor(nn.Module):
    """Eq. 4 along the last axis: (..., n) -> (..., n)."""

    def __init__(self, size: int, rank: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(size, rank)  # W_d, default (Kaiming-uniform) init
        self.up = nn.Linear(rank, size)  # W_u, zero init -> g == 0 at step 0
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * self.up(F.gelu(self.down(x)))


class ChannelMixer(nn.Module):
    """g_channel: mixes the D channels of each token. (B, T, D) -> (B, T, D)."""

    kind = "channel"

    def __init__(self, dim: int, rank: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.adaptor = LowRankAdaptor(dim, rank, alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.adaptor(x)  # (B, T, D)


class TokenMixer(nn.Module):
    """g_token for images: mixes all T tokens (prefix included) per channel."""

    kind = "token"

    def __init__(self, tokens: int, rank: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.adaptor = LowRankAdaptor(tokens, rank, alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        out = self.adaptor(x.transpose(1, 2))  # (B, D, T)
        return out.transpose(1, 2)  # (B, T, D)


class VideoTokenMixer(nn.Module):
    """g_token for video (Eq. 6): g_spatial + g_temporal over frame-major tokens.

    Tokens are ``prefix + frames x spatial``. g_spatial mixes the spatial tokens of each
    frame, g_temporal the frames at each spatial position. Prefix tokens are not
    spatiotemporal, so g_token is zero on them: they pass through this layer by the
    residual of Eq. 3 and are refined by the channel layers only.
    """

    kind = "token"

    def __init__(
        self, prefix: int, frames: int, spatial: int, rank: int, alpha_init: float = 1.0
    ) -> None:
        super().__init__()
        self.prefix, self.frames, self.spatial = prefix, frames, spatial
        self.spatial_adaptor = LowRankAdaptor(spatial, rank, alpha_init)
        self.temporal_adaptor = LowRankAdaptor(frames, rank, alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        B, _, D = x.shape
        v = x[:, self.prefix :].reshape(B, self.frames, self.spatial, D)  # (B, F, S, D)
        spatial = self.spatial_adaptor(v.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)  # (B, F, S, D)
        temporal = self.temporal_adaptor(v.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        mixed = (spatial + temporal).reshape(B, self.frames * self.spatial, D)  # (B, F*S, D)
        prefix = x.new_zeros(B, self.prefix, D)  # (B, P, D): no token update for prefix
        return torch.cat([prefix, mixed], dim=1)  # (B, T, D)
