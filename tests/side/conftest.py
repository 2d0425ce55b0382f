"""Tiny side-network configs and random cached features for the side tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from losa_cache.side import SideConfig

TINY = {"num_layers": 4, "dim": 8, "tokens": 5, "num_classes": 3, "rank": 2, "prefix_tokens": 1}


def tiny_config(**overrides: Any) -> SideConfig:
    """A 4-block, D=8, T=5 (1 prefix + 4 patches) config; overrides win."""
    return SideConfig(**{**TINY, **overrides})


def random_features(
    config: SideConfig, batch: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[int, Tensor]:
    """{block index: (B, T, D)} for every backbone block."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, config.tokens, config.dim)
    return {i: torch.randn(shape, generator=gen).to(dtype) for i in range(config.num_layers)}


def randomise_up(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every zero-initialised W_u random values, so side layers are not identities."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".up." in name:
                p.copy_(torch.randn(p.shape, generator=gen))


@pytest.fixture
def make_config() -> Callable[..., SideConfig]:
    return tiny_config


@pytest.fixture
def make_features() -> Callable[..., dict[int, Tensor]]:
    return random_features


@pytest.fixture
def perturb_up() -> Callable[..., None]:
    return randomise_up
