from __future__ import annotations

from itertools import pairwise

import pytest

from losa_cache.side import evenly_spaced, parse_layers


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
