from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from losa_cache import methods
from losa_cache.side import (
    SideConfig,
    SideNetwork,
    create_side,
    get_side_class,
    learned_params,
    list_sides,
    register_side,
)
from losa_cache.train.keys import deepest_block, side_inputs

CASES: list[dict[str, Any]] = [
    {},
    {"layers": "last:1"},
    {"layers": (1, 3)},
    {"layers": (0, 2, 3), "prefix_tokens": 0},
    {"rank": 7, "num_classes": 11},
    {"tokens": 9, "frames": 2},
    {"tokens": 13, "frames": 3, "prefix_tokens": 1, "layers": (0, 1, 3)},
    {"tokens": 12, "frames": 4, "prefix_tokens": 0, "rank": 1},
]


def test_builtins_registered() -> None:
    assert {"losa", "linear"} <= set(list_sides())


@pytest.mark.parametrize("method", list_sides())
@pytest.mark.parametrize("overrides", CASES)
def test_every_side_builds_counts_and_runs(
    method: str,
    overrides: dict[str, Any],
    make_config: Callable[..., SideConfig],
    make_features: Callable[..., dict[int, Tensor]],
) -> None:
    config = make_config(method=method, **overrides)
    model = create_side(config)
    assert isinstance(model, get_side_class(method))
    assert learned_params(config) == model.num_learned_params()  # analytic == instantiated
    head = sum(p.numel() for p in model.head_parameters())
    assert model.num_learned_params() + head == sum(p.numel() for p in model.parameters())
    # every network reads b_L, as a block or inside a tap (mist's sum:N)
    assert deepest_block(side_inputs(config)) == config.last_layer
    features = make_features(config)
    needed: dict[Any, Tensor] = {i: features[i] for i in model.required_layers}
    needed.update({tap: features[0] for tap in type(model).taps(config)})  # nothing else
    assert model(needed).shape == (2, config.num_classes)


def test_missing_block_and_bad_shape_are_explained(
    make_config: Callable[..., SideConfig], make_features: Callable[..., dict[int, Tensor]]
) -> None:
    config = make_config(layers=(1, 3))
    model = create_side(config)
    features = make_features(config)
    with pytest.raises(KeyError, match=r"block 1 missing .* reads blocks \(1, 3\)"):
        model({3: features[3]})
    with pytest.raises(ValueError, match=r"expected \(B, 5, 8\) = \(B, tokens, dim\)"):
        model({1: features[1], 3: features[3][:, 1:]})


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match=r"'losa' is already registered \(by losa_cache.side.losa"):

        @register_side("losa")
        class Again(SideNetwork):
            pass


def test_register_new_side_then_create(
    monkeypatch: pytest.MonkeyPatch, make_config: Callable[..., SideConfig]
) -> None:
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))  # sandbox the registry

    @register_side("mean_probe")
    class MeanProbe(SideNetwork):
        @classmethod
        def count_learned_params(cls, config: SideConfig) -> int:
            return 1

        @property
        def required_layers(self) -> tuple[int, ...]:
            return (self.config.last_layer,)

        def __init__(self, config: SideConfig) -> None:
            super().__init__(config)
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward_features(self, features: dict[int, Tensor]) -> Tensor:
            return self.scale * self.block(features, self.config.last_layer)

    assert "mean_probe" in list_sides()
    config = make_config(method="mean_probe")
    assert learned_params(config) == create_side(config).num_learned_params() == 1


def test_register_refuses_non_side_networks() -> None:
    with pytest.raises(TypeError, match="needs a SideNetwork subclass"):
        register_side("bad")(torch.nn.Linear)  # type: ignore[arg-type]


def test_unknown_method_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown side network 'nope'; registered: \["):
        get_side_class("nope")
