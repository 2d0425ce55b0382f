"""Eq. 6 on video tokens: g_spatial is the image token mixer per frame, g_temporal the same
form per grid position; counts equal the formula (and Table 2 differs by ~317 D)."""

from __future__ import annotations

import pytest
import torch

from losa_cache.side import SideConfig, create_side, learned_params
from losa_cache.side.mixer import TokenMixer, VideoTokenMixer, adaptor_params

P, FR, S, D, R = 1, 3, 4, 6, 2  # prefix, token frames, grid tokens, channels, rank


def _random_mixer(temporal: bool = True, seed: int = 0) -> VideoTokenMixer:
    torch.manual_seed(seed)
    mixer = VideoTokenMixer(P, FR, S, R, alpha_init=0.7, temporal=temporal)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape))  # W_u != 0: a non-trivial g
    return mixer


def _token_mixer_like(adaptor: torch.nn.Module, size: int) -> TokenMixer:
    """The image token mixer over ``size`` tokens, carrying ``adaptor``'s weights."""
    image = TokenMixer(size, R)
    image.adaptor.load_state_dict(adaptor.state_dict())
    return image


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, P + FR * S, D, generator=torch.Generator().manual_seed(3))


def test_spatial_part_is_the_image_token_mixer_applied_per_frame() -> None:
    mixer, x = _random_mixer(temporal=False), _x()
    image = _token_mixer_like(mixer.spatial_adaptor, S)
    out = mixer(x)
    assert torch.equal(out[:, :P], torch.zeros(2, P, D))  # the prefix rule: no token update
    for f in range(FR):
        frame = x[:, P + f * S : P + (f + 1) * S]  # (B, S, D): frame f's grid
        torch.testing.assert_close(out[:, P + f * S : P + (f + 1) * S], image(frame))


def test_temporal_part_mixes_the_frames_of_each_grid_position() -> None:
    full, x = _random_mixer(temporal=True), _x()
    spatial_only = VideoTokenMixer(P, FR, S, R, temporal=False)
    spatial_only.load_state_dict(full.state_dict(), strict=False)  # same g_spatial
    temporal = full(x) - spatial_only(x)  # (B, T, D): g_temporal alone
    image = _token_mixer_like(full.temporal_adaptor, FR)
    for s in range(S):
        position = x[:, P + s :: S]  # (B, F, D): grid position s in every frame
        torch.testing.assert_close(temporal[:, P + s :: S], image(position))
    assert torch.equal(temporal[:, :P], torch.zeros(2, P, D))


def test_frames_never_mix_without_temporal() -> None:
    mixer, x = _random_mixer(temporal=False), _x()
    y = x.clone()
    y[:, P + S : P + 2 * S] += 1.0  # change frame 1 only
    diff = (mixer(y) - mixer(x)).abs().sum(dim=(0, 2))  # (T,)
    assert diff[P + S : P + 2 * S].gt(0).all()
    assert diff[P : P + S].eq(0).all() and diff[P + 2 * S :].eq(0).all()
    mixed = _random_mixer(temporal=True)
    assert (mixed(y) - mixed(x))[:, P : P + S].abs().sum() > 0  # Eq. 6 does carry it over


@pytest.mark.parametrize("temporal", [True, False])
def test_param_counts_equal_the_formula(temporal: bool) -> None:
    config = SideConfig(
        num_layers=4,
        dim=D,
        tokens=P + FR * S,
        num_classes=3,
        rank=R,
        frames=FR,
        temporal=temporal,
        layers="all",
    )
    model = create_side(config)
    assert model.kinds == ("token", "channel", "token", "channel")
    token = 2 * R * S + R + S + 1 + temporal * (2 * R * FR + R + FR + 1)
    channel = 2 * R * D + R + D + 1
    assert learned_params(config) == model.num_learned_params() == 2 * token + 2 * channel


#: ViViT at 32 frames, 2x14x14 tubelets, 224 px: 16 token frames x 256 grid + CLS; r 64.
VIVIT = {"H": (1280, 32), "g": (1408, 40), "G": (1664, 48), "e": (1792, 56)}
TABLE_2 = {"H": 3.61, "g": 4.78, "G": 6.53, "e": 8.03}  # learned params, M


@pytest.mark.parametrize("name", VIVIT)
def test_vivit_counts_are_the_formula_and_table_2_carries_about_317_d_more(name: str) -> None:
    dim, depth = VIVIT[name]
    config = SideConfig(
        num_layers=depth, dim=dim, tokens=1 + 16 * 256, num_classes=400, frames=16, layers="all"
    )
    half = depth // 2  # all blocks: token and channel layers alternate, the last is channel
    token = adaptor_params(256, 64) + adaptor_params(16, 64)
    assert learned_params(config) == half * (token + adaptor_params(dim, 64))
    excess = (TABLE_2[name] * 1e6 - learned_params(config)) / dim
    assert 310 < excess < 325  # the constant documented in losa.py / the README
