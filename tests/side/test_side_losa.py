"""LoSA behaviour and the paper's parameter counts (arXiv 2402.02887, Tables 1 and 5)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from losa_cache.side import SideConfig, create_side, learned_params
from losa_cache.side.losa import mixing_kinds
from losa_cache.side.mixer import ChannelMixer, LowRankAdaptor, TokenMixer, VideoTokenMixer

ConfigFn = Callable[..., SideConfig]
FeaturesFn = Callable[..., dict[int, Tensor]]

VIT_B = {"num_layers": 12, "dim": 768, "tokens": 197, "num_classes": 100}
VIT_G = {"num_layers": 40, "dim": 1408, "tokens": 257, "num_classes": 100, "rank": 64}

# --------------------------------------------------------------------------- paper counts


@pytest.mark.parametrize(("rank", "millions"), [(16, 0.19), (8, 0.10), (4, 0.05)])
def test_vit_b_param_counts_match_table_1(rank: int, millions: float) -> None:
    config = SideConfig(**VIT_B, rank=rank, layers="all")
    assert round(learned_params(config) / 1e6, 2) == millions


def test_vit_g_all_layers_matches_table_5_exactly() -> None:
    config = SideConfig(**VIT_G, layers="all")
    assert learned_params(config) == 4_298_300
    assert round(learned_params(config) / 1e6, 3) == 4.298


@pytest.mark.parametrize(("n", "millions"), [(1, 0.184), (2, 0.217), (4, 0.431), (8, 0.861)])
def test_vit_g_fewer_layers_near_table_5(n: int, millions: float) -> None:
    # these rows fit T = 256 plus ~1.86 k (test_side_family.py, losa.py): within 1.5 % here
    config = SideConfig(**VIT_G, layers=f"evenly:{n}")
    assert learned_params(config) / 1e6 == pytest.approx(millions, rel=0.015)


def test_vit_g_evenly_4_instantiated_count() -> None:
    config = SideConfig(**VIT_G, layers="evenly:4")
    assert create_side(config).num_learned_params() == learned_params(config) == 429_830


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("n", "kinds"),
    [
        (1, ("channel",)),
        (2, ("token", "channel")),
        (3, ("channel", "token", "channel")),
        (4, ("token", "channel", "token", "channel")),
    ],
)
def test_alternation_by_position_last_is_channel(
    n: int, kinds: tuple[str, ...], make_config: ConfigFn
) -> None:
    assert mixing_kinds(n) == kinds
    model = create_side(make_config(layers=f"last:{n}"))
    assert model.kinds == kinds
    types = {"channel": ChannelMixer, "token": TokenMixer}
    assert all(isinstance(m, types[k]) for m, k in zip(model.mixers, kinds, strict=True))


def test_required_layers(make_config: ConfigFn) -> None:
    assert create_side(make_config(layers=(0, 3))).required_layers == (0, 3)
    assert create_side(make_config(method="linear")).required_layers == (3,)


def test_fresh_losa_is_the_linear_probe(make_config: ConfigFn, make_features: FeaturesFn) -> None:
    config = make_config(layers="all")
    losa = create_side(config)
    linear = create_side(make_config(method="linear"))
    linear.head.load_state_dict(losa.head.state_dict())
    features = make_features(config)
    assert torch.equal(losa.forward_features(features), features[3])  # y_last == b_L
    assert torch.equal(losa(features), linear(features))


def test_forward_is_eq_3(
    make_config: ConfigFn, make_features: FeaturesFn, perturb_up: Callable[..., None]
) -> None:
    config = make_config(layers=(0, 2, 3))
    model = create_side(config)
    perturb_up(model)
    b = make_features(config)
    y = b[3]  # y_0 = b_L
    for index, g in zip((0, 2, 3), model.mixers, strict=True):
        y = g(b[index] + y) + y
    torch.testing.assert_close(model.forward_features(b), y)
    assert not torch.allclose(y, b[3])


# --------------------------------------------------------------------------- mixing


def _changed_tokens(mixer: torch.nn.Module, x: Tensor, token: int) -> Tensor:
    """Which tokens' outputs change when input token ``token`` is perturbed: (T,) bool."""
    x2 = x.clone()
    x2[:, token] += 1.0
    return (mixer(x2) - mixer(x)).abs().amax(dim=(0, 2)) > 0


def test_token_mixer_mixes_tokens_channel_mixer_does_not(perturb_up: Callable[..., None]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)  # (B, T, D)
    token, channel = TokenMixer(5, 3), ChannelMixer(8, 3)
    perturb_up(token)
    perturb_up(channel)
    assert _changed_tokens(token, x, 2).all()
    assert _changed_tokens(channel, x, 2).tolist() == [False, False, True, False, False]


@pytest.mark.parametrize(("n", "mixes"), [(1, False), (2, True)])
def test_network_mixes_tokens_only_with_token_layers(
    n: int,
    mixes: bool,
    make_config: ConfigFn,
    make_features: FeaturesFn,
    perturb_up: Callable[..., None],
) -> None:
    config = make_config(layers=f"last:{n}")
    model = create_side(config)
    perturb_up(model)
    features = make_features(config)
    first = config.layers[0]
    moved = dict(features)
    moved[first] = features[first].clone()
    moved[first][:, 2] += 1.0
    delta = (model.forward_features(moved) - model.forward_features(features)).abs()
    others = delta[:, [0, 1, 3, 4]]
    assert bool((others > 0).any()) is mixes


def test_gradients_reach_w_d_after_one_step(
    make_config: ConfigFn, make_features: FeaturesFn
) -> None:
    config = make_config(layers="all")
    model = create_side(config)
    features = make_features(config)
    target = torch.tensor([0, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        F.cross_entropy(model(features), target).backward()
        downs = [m for m in model.modules() if isinstance(m, LowRankAdaptor)]
        down_grads = [a.down.weight.grad.abs().sum().item() for a in downs]
        assert all(a.up.weight.grad.abs().sum() > 0 for a in downs)
        if step == 0:
            assert down_grads == [0.0] * len(downs)  # W_u = 0 blocks it at step 0
        else:
            assert all(g > 0 for g in down_grads)
        opt.step()


# --------------------------------------------------------------------------- video


def test_video_token_mixer_is_spatial_plus_temporal(perturb_up: Callable[..., None]) -> None:
    P, Fr, S, D = 1, 3, 4, 6
    mixer = VideoTokenMixer(P, Fr, S, rank=2)
    perturb_up(mixer)
    x = torch.randn(2, P + Fr * S, D)  # (B, T, D), frame-major
    out = mixer(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, :P], torch.zeros(2, P, D))  # prefix: no token update
    v = x[:, P:].reshape(2, Fr, S, D)
    for f in range(Fr):
        for s in range(S):
            spatial = mixer.spatial_adaptor(v[:, f].transpose(1, 2))[:, :, s]  # (B, D)
            temporal = mixer.temporal_adaptor(v[:, :, s].transpose(1, 2))[:, :, f]
            torch.testing.assert_close(out[:, P + f * S + s], spatial + temporal)


def test_video_losa_counts_and_runs(make_config: ConfigFn, make_features: FeaturesFn) -> None:
    config = make_config(tokens=13, frames=3, layers="last:2")  # 1 prefix + 3 x 4
    model = create_side(config)
    assert model.kinds == ("token", "channel")
    assert isinstance(model.mixers[0], VideoTokenMixer)
    spatial, temporal = 2 * 2 * 4 + 2 + 4 + 1, 2 * 2 * 3 + 2 + 3 + 1
    channel = 2 * 2 * 8 + 2 + 8 + 1
    assert learned_params(config) == model.num_learned_params() == spatial + temporal + channel
    assert model(make_features(config)).shape == (2, 3)


# --------------------------------------------------------------------------- dtype + head


def test_bf16_inputs_and_bf16_module(
    make_config: ConfigFn, make_features: FeaturesFn, perturb_up: Callable[..., None]
) -> None:
    config = make_config(layers="all")
    model = create_side(config)
    perturb_up(model)
    ref = model(make_features(config))
    out = model(make_features(config, dtype=torch.bfloat16))  # computed in fp32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.1, atol=0.1)
    model.to(torch.bfloat16)
    out16 = model(make_features(config))  # fp32 input cast to the module's bf16
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref, rtol=0.1, atol=0.2)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_head_pooling(pool: str, make_config: ConfigFn, make_features: FeaturesFn) -> None:
    config = make_config(method="linear", pool=pool, prefix_tokens=2)
    model = create_side(config)
    x = make_features(config)[3]
    pooled = x[:, 0] if pool == "cls" else x[:, 2:].mean(dim=1)
    torch.testing.assert_close(model({3: x}), model.head.fc(model.head.norm(pooled)))
