"""int8 features: symmetric quantisation with one fp16 scale per (image, token) row.

A row x (D values) is stored as codes q = round(x / s) in [-127, 127] and the scale
s = fp16(absmax(x) / 127); it reads back as float32(q) * float32(s), exactly that
product (the reader does nothing else). An all-zero row has s = 0 and decodes to 0.
Error per value: at most s / 2 from rounding, plus the fp16 rounding of s
(|x| <= absmax, so at most absmax * 2^-11 more); unwritten rows have s = NaN.

The training reader reads codes and scales as they are stored (zero-copy scatter reads
into its window buffers), its pieces, batches and memory caches hold them so (1 byte a
value plus 2 a token), and :func:`dequantize` runs on each batch after its transfer to
the training device (:func:`losa_cache.train.feed.to_device`), numpy or torch alike.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["dequantize", "error_bound", "quantize"]

LEVELS = 127
Array = TypeVar("Array", np.ndarray, torch.Tensor)


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (..., D), scales fp16 (...)) of ``x`` (..., D), computed in fp32."""
    x = x.float()
    scale = (x.abs().amax(dim=-1) / LEVELS).to(torch.float16)
    s = scale.float().unsqueeze(-1)
    q = torch.where(s > 0, torch.round(x / torch.where(s > 0, s, 1.0)), 0.0)
    return q.clamp_(-LEVELS, LEVELS).to(torch.int8), scale


def dequantize(codes: Array, scales: Array) -> Array:
    """float32 values of int8 ``codes`` (..., D) with fp16 ``scales`` (...): q * s."""
    if isinstance(codes, torch.Tensor):
        return codes.float() * scales.float().unsqueeze(-1)
    return codes.astype(np.float32) * scales.astype(np.float32)[..., None]


def error_bound(x: torch.Tensor) -> torch.Tensor:
    """Largest |x - dequantize(quantize(x))| the scheme allows, per row (...)."""
    absmax = x.float().abs().amax(dim=-1)
    scale = (absmax / LEVELS).to(torch.float16).float()
    return scale / 2 * (1 + 2**-10) + absmax * 2**-10
