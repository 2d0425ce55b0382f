from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from losa_cache.side import SideConfig
from losa_cache.side.config import VERSION_KEY


def test_every_field_has_help() -> None:
    for f in dataclasses.fields(SideConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"


def test_spec_string_resolves_to_tuple(make_config: Callable[..., SideConfig]) -> None:
    config = make_config(layers="evenly:2")
    assert config.layers == (1, 3)
    assert make_config(layers=[1, 3]).layers == (1, 3)  # JSON lists are accepted too


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"method": "linear", "pool": "mean", "dropout": 0.1},
        {"layers": "last:1", "alpha_init": 0.5, "prefix_tokens": 0},
        {"tokens": 9, "frames": 2, "layers": (1, 2, 3)},
    ],
)
def test_json_round_trip(overrides: dict[str, Any], make_config: Callable[..., SideConfig]) -> None:
    config = make_config(**overrides)
    text = config.to_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert data[VERSION_KEY]
    assert SideConfig.from_json(text) == config
    assert SideConfig.from_dict(config.to_dict()) == config


def test_from_dict_rejects_unknown_keys(make_config: Callable[..., SideConfig]) -> None:
    data = make_config().to_dict() | {"ranks": 4}
    with pytest.raises(ValueError, match=r"unknown SideConfig keys \['ranks'\]"):
        SideConfig.from_dict(data)


def test_frozen_and_replace_revalidates(make_config: Callable[..., SideConfig]) -> None:
    config = make_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rank = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        dataclasses.replace(config, rank=0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"rank": 0}, "rank must be an integer >= 1, got 0"),
        ({"dim": -1}, "dim must be an integer >= 1"),
        ({"num_layers": 0}, "num_layers must be an integer >= 1"),
        ({"method": "nope"}, r"unknown method 'nope'; choose one of \[.*'linear', 'losa', "),
        ({"pool": "max"}, r"pool must be one of \('auto', 'cls', 'mean'\), got 'max'"),
        ({"pool": "cls", "prefix_tokens": 0}, "pool='cls' needs prefix_tokens >= 1"),
        ({"prefix_tokens": 5}, r"prefix_tokens must be an integer in 0\.\.tokens-1 \(4\)"),
        ({"frames": 3}, "frames=3 does not divide the 4 non-prefix tokens"),
        ({"layers": (0, 4)}, r"layers \[4\] out of range: valid 0-based block indices are 0\.\.3"),
        ({"layers": (3, 3)}, "strictly increasing"),
        ({"layers": (2, 1, 3)}, "strictly increasing"),
        ({"layers": "evenly:9"}, r"1 <= N <= depth; this backbone has 4"),
        ({"layers": (0, 1)}, r"must include the last block \(3, 0-based\)"),
        ({"layers": ()}, "losa needs at least one layer; use method='linear'"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"alpha_init": float("nan")}, "alpha_init must be a finite float"),
    ],
)
def test_bad_configs_raise_helpful_errors(
    overrides: dict[str, Any], match: str, make_config: Callable[..., SideConfig]
) -> None:
    with pytest.raises(ValueError, match=match):
        make_config(**overrides)


def test_linear_ignores_layer_rules(make_config: Callable[..., SideConfig]) -> None:
    assert make_config(method="linear", layers=()).layers == ()
    assert make_config(method="linear", layers=(0, 1)).layers == (0, 1)


@pytest.mark.parametrize(
    ("overrides", "pool"),
    [
        ({}, "cls"),
        ({"prefix_tokens": 0}, "mean"),
        ({"tokens": 9, "frames": 2}, "mean"),  # video: prefix tokens are not token-mixed
        ({"pool": "mean"}, "mean"),
        ({"pool": "cls", "tokens": 9, "frames": 2}, "cls"),
    ],
)
def test_resolved_pool(
    overrides: dict[str, Any], pool: str, make_config: Callable[..., SideConfig]
) -> None:
    assert make_config(**overrides).resolved_pool == pool
