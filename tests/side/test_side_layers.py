from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from losa_cache.side import evenly_spaced, parse_layers
from losa_cache.side.mixer import ChannelMixer, TokenMixer, VideoTokenMixer, token_major


@pytest.mark.parametrize(
    ("spec", "depth", "expected"),
    [
        ("all", 4, (0, 1, 2, 3)),
        ("ALL ", 1, (0,)),
        ("last:2", 12, (10, 11)),
        ("last:12", 12, tuple(range(12))),
        ("evenly:4", 40, (9, 19, 29, 39)),  # the paper's blocks 10, 20, 30, 40
        ("evenly:8", 40, (4, 9, 14, 19, 24, 29, 34, 39)),
        ("evenly:1", 40, (39,)),
        ("evenly:12", 12, tuple(range(12))),
        ("evenly:5", 12, (1, 3, 6, 8, 11)),
        ("3,6,9", 12, (3, 6, 9)),
        ("9, 3,6", 12, (3, 6, 9)),  # sorted
        ("-1", 12, (11,)),  # one index, not timm's "last n"
        ("0,-2", 12, (0, 10)),
    ],
)
def test_parse_layers(spec: str, depth: int, expected: tuple[int, ...]) -> None:
    assert parse_layers(spec, depth) == expected


@pytest.mark.parametrize("depth", [1, 2, 7, 12, 24, 40, 48])
def test_evenly_spaced_always_ends_at_last_block(depth: int) -> None:
    for n in range(1, depth + 1):
        layers = evenly_spaced(n, depth)
        assert len(layers) == n and layers[-1] == depth - 1
        assert all(a < b for a, b in pairwise(layers))


@pytest.mark.parametrize(
    ("spec", "depth", "match"),
    [
        ("", 12, "empty layer spec"),
        ("last:13", 12, r"1 <= N <= depth; this backbone has 12"),
        ("evenly:0", 12, r"1 <= N <= depth"),
        ("evenly:x", 12, "integer N"),
        ("12", 12, r"out of range .* 0\.\.11"),
        ("-13", 12, "out of range"),
        ("3,-9", 12, "same block twice"),
        ("1,,2", 12, "cannot parse"),
        ("first:2", 12, "cannot parse"),
        ("all", 0, "depth must be >= 1"),
    ],
)
def test_parse_layers_errors(spec: str, depth: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_layers(spec, depth)


# ---------------------------------------------------------------- mixers: fast == formula


def _old_adaptor(a: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4 as first written: alpha * W_u GeLU(W_d x) on the last axis."""
    return a.alpha * a.up(torch.nn.functional.gelu(a.down(x)))


def _old_mixer(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The mixers before the matmul-on-a-view rewrite (transposes, then nn.Linear)."""
    if isinstance(m, ChannelMixer):
        return _old_adaptor(m.adaptor, x)
    if isinstance(m, TokenMixer):
        return _old_adaptor(m.adaptor, x.transpose(1, 2)).transpose(1, 2)
    B, _, D = x.shape
    v = x[:, m.prefix :].reshape(B, m.frames, m.spatial, D)
    spatial = _old_adaptor(m.spatial_adaptor, v.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)
    temporal = _old_adaptor(m.temporal_adaptor, v.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    mixed = (spatial + temporal).reshape(B, m.frames * m.spatial, D)
    return torch.cat([x.new_zeros(B, m.prefix, D), mixed], dim=1)


@pytest.mark.parametrize("major", [False, True], ids=["batch-major", "token-major"])
@pytest.mark.parametrize("kind", ["channel", "token", "video"])
def test_fast_mixers_equal_the_formula_values_and_gradients(kind: str, major: bool) -> None:
    torch.manual_seed(0)
    tokens, dim = 1 + 3 * 4, 6
    mixer = {
        "channel": lambda: ChannelMixer(dim, 3, 0.7),
        "token": lambda: TokenMixer(tokens, 3, 0.7),
        "video": lambda: VideoTokenMixer(1, 3, 4, 3, 0.7),
    }[kind]()
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn(p.shape))  # W_u != 0: a non-trivial g
    x = torch.randn(2, tokens, dim, dtype=torch.float64)
    mixer = mixer.double()
    results = []
    for fn in (mixer, lambda t: _old_mixer(mixer, t)):
        mixer.zero_grad()
        xi = x.clone().requires_grad_()
        out = fn(token_major(xi, xi.dtype) if major else xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out).double()).sum().backward()
        results.append([out, xi.grad, *(p.grad for p in mixer.parameters())])
    for new, old in zip(*results, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-12, atol=1e-12)
    assert results[0][0].shape == x.shape


def test_token_major_is_one_cast_copy_and_a_no_op_when_already_laid_out() -> None:
    x = torch.randn(3, 5, 4, dtype=torch.float16)
    t = token_major(x, torch.bfloat16)
    assert t.dtype == torch.bfloat16 and t.transpose(0, 1).is_contiguous()
    torch.testing.assert_close(t.float(), x.to(torch.bfloat16).float(), rtol=0, atol=0)
    assert token_major(t, torch.bfloat16) is t


def test_fast_mixers_keep_only_their_input_and_bottleneck_for_backward() -> None:
    """Activation memory: a token mixer saves x and (B, r, D) tensors, not a second
    (B, T, D) one (the old alpha * up(...) kept the up output for alpha's gradient)."""
    mixer = TokenMixer(197, 4)
    x = token_major(torch.randn(2, 197, 64), torch.float32).requires_grad_()
    big = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.numel() >= x.numel():
            big.append(t.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixer(x)
    assert set(big) == {x.data_ptr()}
