"""losa's ablation options (Tables 4 and 6): --start b_last|embed and --taps
block|attn|mlp|attn+mlp. What each declares it reads, identity at start, parameter counts
== the formula (built, on the meta device and in plan --method), and errors."""

from __future__ import annotations

import pytest
import torch

from losa_cache.backbone.registry import create_architecture
from losa_cache.method_cost import method_cost
from losa_cache.side import SideConfig, create_side, get_side_class, learned_params
from losa_cache.side.losa import mixing_kinds
from losa_cache.side.mixer import adaptor_params

SMALL = {"num_layers": 4, "dim": 8, "tokens": 5, "num_classes": 3, "rank": 2}
TAPS = ("block", "attn", "mlp", "attn+mlp")


def config(**kw: object) -> SideConfig:
    return SideConfig(**{**SMALL, "layers": "evenly:2", **kw})  # blocks 1 and 3


def features(cfg: SideConfig) -> dict:
    cls = get_side_class(cfg.method)
    keys = [*cls.blocks(cfg), *cls.taps(cfg)]
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(2, cfg.tokens, cfg.dim, generator=gen) for k in keys}


@pytest.mark.parametrize(
    ("start", "taps", "blocks", "tap_keys"),
    [
        ("b_last", "block", (1, 3), ()),
        ("b_last", "attn", (3,), ("attn:1", "attn:3")),
        ("b_last", "mlp", (3,), ("mlp:1", "mlp:3")),
        ("b_last", "attn+mlp", (3,), ("attn:1", "mlp:1", "attn:3", "mlp:3")),
        ("embed", "block", (1, 3), ("embed",)),
        ("embed", "attn", (), ("embed", "attn:1", "attn:3")),
    ],
)
def test_what_each_variant_declares_it_reads(start, taps, blocks, tap_keys) -> None:
    cfg = config(start=start, taps=taps)
    cls = get_side_class("losa")
    assert cls.blocks(cfg) == blocks == cfg.required_layers
    assert cls.taps(cfg) == tap_keys


@pytest.mark.parametrize("taps", TAPS)
@pytest.mark.parametrize("start", ["b_last", "embed"])
def test_a_fresh_network_is_the_identity_on_its_start(start: str, taps: str) -> None:
    cfg = config(start=start, taps=taps)
    feats = features(cfg)
    with torch.no_grad():
        out = create_side(cfg).forward_features(feats)
    y0 = feats[3] if start == "b_last" else feats["embed"]
    torch.testing.assert_close(out, y0, rtol=0, atol=0)


@pytest.mark.parametrize("taps", TAPS)
def test_each_side_layer_reads_its_own_input(taps: str) -> None:
    """Perturb one input at a time: a trained (non-zero W_u) network responds to each key
    it declares, and only to those."""
    cfg = config(taps=taps)
    model = create_side(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        feats = features(cfg)
        base = model.forward_features(feats)
        for key in feats:
            moved = model.forward_features({**feats, key: feats[key] + 1.0})
            assert not torch.allclose(moved, base), key


@pytest.mark.parametrize("taps", TAPS)
@pytest.mark.parametrize("layers", ["all", "evenly:2", "evenly:1"])
def test_param_count_equals_the_formula(taps: str, layers: str) -> None:
    cfg = config(taps=taps, layers=layers)
    n = len(cfg.layers) * (2 if taps == "attn+mlp" else 1)
    per = {"channel": adaptor_params(cfg.dim, cfg.rank), "token": adaptor_params(cfg.tokens, 2)}
    formula = sum(per[k] for k in mixing_kinds(n))
    assert learned_params(cfg) == create_side(cfg).num_learned_params() == formula
    assert learned_params(config(taps=taps, layers=layers, start="embed")) == formula


def test_attn_mlp_is_two_alternating_side_layers_per_block() -> None:
    model = create_side(config(taps="attn+mlp"))
    assert model.inputs == ("attn:1", "mlp:1", "attn:3", "mlp:3")
    assert model.kinds == ("token", "channel", "token", "channel")


def test_plan_method_prices_the_variants_on_vit_b() -> None:
    net = create_architecture("vit_b", "meta")
    base = method_cost(net, "losa", rank=16)
    both = method_cost(net, "losa", rank=16, options={"taps": "attn+mlp"})
    embed = method_cost(net, "losa", rank=16, options={"start": "embed", "taps": "mlp"})
    assert base["learned_params"] == 191_274  # Table 1, r 16
    # 24 side layers, 12 channel + 12 token: twice the 12 (6 + 6) of the default
    assert both["learned_params"] == 2 * 191_274
    assert both["method_gmacs_per_image"] == pytest.approx(2 * base["method_gmacs_per_image"])
    assert embed["blocks_read"] == [] and embed["taps_read"][0] == "embed"
    assert embed["taps_read"][-1] == "mlp:11" and embed["learned_params"] == 191_274
    assert embed["backbone_gmacs_per_image"] == base["backbone_gmacs_per_image"]  # to block 11


def test_bad_choices_name_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown start .b0. \(--start\).*.embed.\]"):
        config(start="b0")
    with pytest.raises(ValueError, match=r"unknown taps 'ffn' \(--taps\).*'attn\+mlp'\]"):
        config(taps="ffn")
