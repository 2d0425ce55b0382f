"""Side networks trained on cached backbone block outputs (LoSA, MIST's LAE, the linear probe).

    config = SideConfig(num_layers=12, dim=768, tokens=197, num_classes=100,
                        method="losa", rank=16, layers="evenly:4")
    model = create_side(config)          # nn.Module
    logits = model({i: b[i] for i in model.required_layers})   # b[i]: (B, T, D)
    learned_params(config)               # analytic, head excluded

Adding a method: a module with a ``SideNetwork`` subclass decorated with
``@register_side("name")``, imported below.
"""

from __future__ import annotations

# register the built-in methods
from losa_cache.side import last, linear, losa, lowrank_mlp, mist, transformer  # noqa: F401
from losa_cache.side.base import SideNetwork
from losa_cache.side.config import SideConfig
from losa_cache.side.head import ClassifierHead, head_params
from losa_cache.side.layers import evenly_spaced, parse_layers
from losa_cache.side.registry import (
    create_side,
    get_side_class,
    learned_params,
    list_sides,
    register_side,
)

__all__ = [
    "ClassifierHead",
    "SideConfig",
    "SideNetwork",
    "create_side",
    "evenly_spaced",
    "get_side_class",
    "head_params",
    "learned_params",
    "list_sides",
    "parse_layers",
    "register_side",
]
