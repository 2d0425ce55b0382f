"""Parameters and MACs of a side network or live baseline, from its config alone.

No weights are built: side networks and baselines are instantiated on the meta device
(shapes only) and their forward is counted with torch's FlopCounterMode (every matmul,
attention included; FLOPs = 2 x MACs as it counts a matmul). Backbone MACs come from
:mod:`losa_cache.compute`, as the LoSA paper counts them (its "GFLOPs" are GMACs).

* a side network reads cached blocks: its backbone cost is one forward per image up to
  the deepest block it reads, paid once at extraction (the paper's setting pays it at
  every step, which ``total`` shows);
* a live baseline runs its whole backbone on every image: ``method`` is what it adds to
  that forward (LoRA's branches, VPT's prompt tokens; the head is excluded everywhere).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from losa_cache.baselines.methods import (
    build_baseline,
    count_baseline,
    prune_for_head,
    saved_options,
)
from losa_cache.compute import backbone_cost
from losa_cache.methods import get_method, list_methods

__all__ = ["method_cost"]

DEFAULT_RANK = 64  # TrainConfig's: plan prices what ``train --method M`` would run


def _macs(fn: Any, *args: Any) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops()) // 2


def _side(
    net: torch.nn.Module,
    method: str,
    rank: int | None,
    layers: str,
    hidden: int | None,
    options: dict[str, Any],
) -> tuple[dict[str, Any], int]:
    from losa_cache.side import SideConfig, create_side, learned_params
    from losa_cache.train.keys import deepest_block

    extra = {k: v for k, v in (("rank", rank), ("hidden", hidden)) if v is not None}
    extra |= options  # the method's own options (losa: start, taps)
    tokens = net.num_prefix_tokens + net.patch_embed.num_patches
    config = SideConfig(
        num_layers=len(net.blocks),
        dim=net.embed_dim,
        tokens=tokens,
        num_classes=1,
        method=method,
        layers=layers,
        prefix_tokens=net.num_prefix_tokens,
        **extra,
    )
    with torch.device("meta"):
        side = create_side(config)
        inputs = [*side.required_layers, *type(side).taps(config)]  # blocks, then taps
        feats = {i: torch.empty(1, tokens, config.dim) for i in inputs}
    info = {
        "kind": "side network",
        "learned_params": learned_params(config),
        "blocks_read": list(config.required_layers),
        "taps_read": list(type(side).taps(config)),
        "backbone_blocks": deepest_block(inputs) + 1,  # a sum:k tap runs blocks 0..k-1
        "rank": config.rank if "rank" in side.uses else None,
        "hidden": config.hidden if "hidden" in side.uses else None,
    }
    return info, _macs(side.forward_features, feats)


def _baseline(
    net: torch.nn.Module, method: str, rank: int | None, options: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    from losa_cache.side import SideConfig

    cfg = saved_options({"rank": rank or DEFAULT_RANK, **options})  # defaults, checked
    pruned = prune_for_head(copy.deepcopy(net))
    tokens = net.num_prefix_tokens + net.patch_embed.num_patches
    head = SideConfig(
        num_layers=len(net.blocks),
        dim=net.embed_dim,
        tokens=tokens,
        num_classes=1,
        method="linear",
        prefix_tokens=net.num_prefix_tokens,
    )
    with torch.device("meta"):
        model = build_baseline(method, net, head, cfg)
        x = torch.empty(1, net.patch_embed.proj.in_channels, *net.patch_embed.img_size)
    run = model.prompted if model.prompts is not None else model.backbone.forward_features
    info = {
        "kind": "live baseline",
        "learned_params": count_baseline(method, pruned, cfg),
        "rank": cfg.rank if "rank" in get_method(method).uses else None,
    }
    return info, _macs(run, x) - _macs(pruned.forward_features, x)


def method_cost(
    net: torch.nn.Module,
    method: str,
    rank: int | None = None,
    layers: str = "all",
    hidden: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Learned parameters (head excluded) and GMACs / GFLOPs per image of ``method`` on the
    architecture ``net`` (a timm ViT, best on the meta device); ``options``: a baseline's
    (``prompt_tokens``...) or a side network's own (losa: ``start``, ``taps``)."""
    if method not in (known := list_methods()):
        raise ValueError(
            f"unknown --method {method!r}; choose a side network or a live "
            f"baseline: {', '.join(known)}"
        )
    if get_method(method).live:
        info, method_macs = _baseline(net, method, rank, options or {})
        backbone = backbone_cost(net)
        setting = "every step runs the whole backbone (forward + backward through it)"
    else:
        info, method_macs = _side(net, method, rank, layers, hidden, options or {})
        backbone = backbone_cost(net, info.pop("backbone_blocks") - 1)
        setting = (
            "the backbone runs once per image at extraction; training reads the "
            "store (the paper's setting runs it every step: total)"
        )
    total = backbone["gmacs_per_image"] + method_macs / 1e9
    return {
        "method": method,
        **info,
        "method_gmacs_per_image": method_macs / 1e9,
        "method_gflops_per_image": 2 * method_macs / 1e9,
        "backbone_gmacs_per_image": backbone["gmacs_per_image"],
        "backbone_gflops_per_image": backbone["gflops_per_image"],
        "total_gmacs_per_image": total,
        "total_gflops_per_image": 2 * total,
        "setting": setting,
        "counted": "forward of one image, classifier head excluded; GMACs are what the "
        "LoSA paper's tables call GFLOPs; GFLOPs = 2 x GMACs",
    }
