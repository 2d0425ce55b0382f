"""MIST's edge network (LAE): parameter counts, identity start, gather, ablations, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from losa_cache.side import SideConfig, create_side, learned_params
from losa_cache.side.mist import (
    ABLATIONS,
    DepthwiseConv,
    LowRankAttention,
    edge_block_params,
    gather,
    input_key,
    k_candidates,
)

VIT_B = {"num_layers": 12, "dim": 768, "tokens": 197, "num_classes": 100, "method": "mist"}
TINY = {
    "num_layers": 6,
    "dim": 8,
    "tokens": 10,
    "num_classes": 3,
    "method": "mist",
    "width": 4,
    "heads": 2,
    "prefix_tokens": 1,
}  # 1 prefix + 3x3 grid


def tiny(**overrides: object) -> SideConfig:
    return SideConfig(**{**TINY, **overrides})


def maps(config: SideConfig, batch: int = 2, seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """z0 and every block output, (B, T, D) each."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, config.tokens, config.dim)
    z0 = torch.randn(shape, generator=gen)
    return z0, [torch.randn(shape, generator=gen) for _ in range(config.num_layers)]


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Random values everywhere, so no block is the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    ("overrides", "count"),
    [
        ({"width": 16}, 206_016),  # the paper's text: QKV width 16 for D 768
        ({"width": 32}, 402_816),  # fits the tables' 0.38 M better
        ({"width": 32, "edge_blocks": 8}, 805_632),  # Table 4: 8 layers = twice 4
        ({"width": 32, "block_fn": "mlp"}, 402_688),  # Table 4: MLP, attention's count
        ({"width": 32, "block_fn": "dwconv"}, 36_864),  # Table 4: DWConv 0.03 M (+ LayerNorms)
        ({"edge_blocks": 0}, 0),  # gather only
    ],
)
def test_vit_b_counts(overrides: dict, count: int) -> None:
    config = SideConfig(**{**VIT_B, **overrides})
    assert learned_params(config) == count
    assert create_side(config).num_learned_params() == count


@pytest.mark.parametrize("block_fn", ["attention", "mlp", "dwconv"])
@pytest.mark.parametrize(("width", "heads", "blocks"), [(4, 1, 1), (4, 2, 3), (6, 3, 2)])
def test_formula_matches_the_built_network(
    block_fn: str, width: int, heads: int, blocks: int
) -> None:
    config = tiny(width=width, heads=heads, edge_blocks=blocks, block_fn=block_fn)
    d, w = config.dim, width
    per_fn = {
        "attention": (3 * w * d + 3 * w) + (w * d + d),
        "mlp": (2 * w * d + 2 * w) + (2 * w * d + d),
        "dwconv": 9 * d + d,
    }[block_fn]
    assert edge_block_params(config) == 2 * d + per_fn
    assert learned_params(config) == blocks * (2 * d + per_fn)
    assert create_side(config).num_learned_params() == learned_params(config)


# --------------------------------------------------------------------------- gather


def test_gather_sums_z0_and_the_first_k_blocks_in_fp32() -> None:
    z0, blocks = maps(tiny())
    got = gather(z0, blocks, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, z0 + blocks[0] + blocks[1] + blocks[2])
    # fp16 inputs: accumulated in fp32, so closer to the exact sum than an fp16 running sum
    big = [b.half() * 300 for b in blocks]
    exact = z0.half().double() + sum(b.double() for b in big)
    fp16_sum = z0.half()
    for b in big:
        fp16_sum = fp16_sum + b
    err32 = (gather(z0.half(), big, 6).double() - exact).abs().max()
    err16 = (fp16_sum.double() - exact).abs().max()
    assert err32 < 1e-3 < err16


@pytest.mark.parametrize("k", [0, 7])
def test_gather_refuses_k_outside_the_blocks(k: int) -> None:
    z0, blocks = maps(tiny())
    with pytest.raises(ValueError, match="1 <= k <= 6"):
        gather(z0, blocks, k)


def test_network_reads_sum_tap_or_gathers_embed_and_blocks() -> None:
    config = tiny(gather_k=2)
    model = create_side(config).eval()
    perturb(model)
    z0, blocks = maps(config)
    assert input_key(config) == "sum:2" and model.required_layers == ()
    assert type(model).taps(config) == ("sum:2",)
    from_tap = model({"sum:2": gather(z0, blocks, 2)})
    from_blocks = model({"embed": z0, 0: blocks[0], 1: blocks[1]})
    torch.testing.assert_close(from_tap, from_blocks)
    assert not torch.allclose(
        from_tap, model({"sum:3": gather(z0, blocks, 3), "sum:2": gather(z0, blocks, 1)})
    )
    with pytest.raises(KeyError, match="--taps sum:2"):
        model({0: blocks[0], 1: blocks[1]})
    with pytest.raises(ValueError, match="expected"):
        model({"sum:2": z0[:, :4]})


def test_k_candidates_default_to_thirds_of_the_depth() -> None:
    assert k_candidates(SideConfig(**VIT_B)) == (4, 8, 12)
    assert k_candidates(tiny()) == (2, 4, 6)
    assert k_candidates(tiny(k_candidates="6,1,3")) == (1, 3, 6)
    assert input_key(SideConfig(**VIT_B)) == "sum:12"  # gather_k unset: every block


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"gather_k": 7}, "1..6"),
        ({"gather_k": 0}, "--gather-k must be"),
        ({"k_candidates": "2,9"}, r"\[9\] exceed the depth 6"),
        ({"k_candidates": "two"}, "neither 'thirds'"),
        ({"width": 5, "heads": 2}, "must divide --width 5"),
        ({"block_fn": "conv"}, "choose one of"),
        ({"block_fn": "dwconv", "tokens": 11}, "square patch grid"),
        ({"edge_blocks": -1}, "--edge-blocks must be"),
    ],
)
def test_bad_options_are_one_line_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


# --------------------------------------------------------------------------- init and blocks


@pytest.mark.parametrize("block_fn", ["attention", "mlp", "dwconv"])
def test_fresh_network_is_the_linear_probe_on_its_map(block_fn: str) -> None:
    config = tiny(block_fn=block_fn)
    model = create_side(config)
    z0, blocks = maps(config)
    g = gather(z0, blocks, 6)
    torch.testing.assert_close(model.forward_features({"sum:6": g}), g)
    probe = create_side(tiny(edge_blocks=0))  # the gather-only ablation
    probe.head.load_state_dict(model.head.state_dict())
    torch.testing.assert_close(model({"sum:6": g}), probe({"sum:6": g}))
    # ... and it is not stuck there: the zeroed output layer gets gradient at step 0
    F.cross_entropy(model({"sum:6": g}), torch.tensor([0, 1])).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("edge.")]
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)


def test_low_rank_attention_is_multi_head_softmax_attention() -> None:
    attn = LowRankAttention(dim=8, width=4, heads=2)
    perturb(attn)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 2).unbind(2)  # (B, T, h, w/h) each
    heads = []
    for h in range(2):
        scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) / math.sqrt(2)  # (B, T, T)
        heads.append(scores.softmax(-1) @ v[:, :, h])
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, -1)))


def test_dwconv_convolves_the_grid_and_treats_prefix_tokens_as_isolated_pixels() -> None:
    conv = DepthwiseConv(dim=4, prefix_tokens=1, side=3)
    perturb(conv)
    x = torch.randn(2, 10, 4)
    grid = x[:, 1:].transpose(1, 2).reshape(2, 4, 3, 3)
    want_grid = F.conv2d(grid, conv.conv.weight, conv.conv.bias, padding=1, groups=4)
    lone = torch.zeros(2, 4, 3, 3)
    lone[:, :, 1, 1] = x[:, 0]
    want_prefix = F.conv2d(lone, conv.conv.weight, conv.conv.bias, padding=1, groups=4)
    out = conv(x)
    torch.testing.assert_close(out[:, 1:], want_grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out[:, 0], want_prefix[:, :, 1, 1])


def test_ablations_are_configs() -> None:
    assert create_side(tiny(**ABLATIONS["lae_only"])).required_layers == (5,)
    assert input_key(tiny(**ABLATIONS["lae_only"])) == 5
    assert learned_params(tiny(**ABLATIONS["gather_only"])) == 0
    for name, overrides in ABLATIONS.items():
        model = create_side(tiny(**overrides))
        z0, blocks = maps(model.config)
        assert model({input_key(model.config): blocks[-1], "sum:6": z0}).shape == (2, 3), name


def test_config_json_round_trip() -> None:
    config = tiny(width=6, heads=3, block_fn="mlp", gather="last", gather_k=4, k_candidates="2,4")
    assert SideConfig.from_json(config.to_json()) == config


# --------------------------------------------------------------------------- training


def test_lae_only_trains_through_the_engine_on_a_block_store(
    micro_store: str, tmp_path: Path
) -> None:
    from losa_cache.adapter import load_adapter
    from losa_cache.train import TrainConfig, train

    cfg = TrainConfig(
        store=micro_store,
        out=str(tmp_path / "run"),
        method="mist",
        gather="last",
        width=8,
        heads=2,
        edge_blocks=2,
        optimizer="adamw",
        batch_size=16,
        steps=4,
        eval_every=2,
        workers=1,
        device="cpu",
    )
    m = train(cfg, progress=False)
    side = load_adapter(tmp_path / "run").config
    assert m["complete"] and m["step"] == 4 and m["method"] == "mist"
    assert (side.width, side.heads, side.edge_blocks, side.gather) == (8, 2, 2, "last")
    assert m["learned_params"] == learned_params(side) == 2 * edge_block_params(side) > 0
    proj = load_adapter(tmp_path / "run").model.edge[0].fn.proj.weight
    assert proj.abs().sum() > 0  # trained away from the identity start


def test_training_on_g_k_without_its_inputs_names_the_tap_and_the_fix(
    micro_store: str, tmp_path: Path
) -> None:
    """A store of blocks without embed can give neither sum:k nor its parts."""
    from losa_cache.store import StoreError
    from losa_cache.train import TrainConfig, train

    cfg = TrainConfig(
        store=micro_store,
        out=str(tmp_path / "run"),
        method="mist",
        gather_k=4,  # one k (without it: k on val, tests/side/test_mist_k.py)
        steps=1,
        device="cpu",
        workers=1,
    )
    with pytest.raises(
        StoreError,
        match=r"reads the store tap sum:4, which the store does not "
        r"hold .*--extend --taps embed",
    ):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
