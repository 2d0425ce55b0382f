"""Method modules: each method's own options dataclass, and what a config needs, unbuilt."""

from __future__ import annotations

from dataclasses import fields

import pytest

from losa_cache.side import SideConfig, get_side_class, list_sides
from losa_cache.side.losa import LosaOptions, LosaSide


def test_each_method_declares_its_options_with_help_and_ranges() -> None:
    for name in list_sides():
        cls = get_side_class(name)
        own = fields(cls.options) if cls.options is not None else ()
        assert all(f.metadata["help"] for f in own), name
        assert cls.uses == tuple(f.name for f in own), name
    assert LosaSide.uses == ("rank", "layers", "start", "taps", "alpha_init", "temporal")
    assert get_side_class("linear").uses == ()
    with pytest.raises(ValueError, match="--rank must be an integer >= 1, got 0"):
        LosaOptions(rank=0)
    with pytest.raises(ValueError, match="alpha_init must be a finite float"):
        SideConfig(num_layers=4, dim=8, tokens=5, num_classes=3, alpha_init=float("inf"))
    # a method that ignores rank accepts any
    SideConfig(num_layers=4, dim=8, tokens=5, num_classes=3, method="linear", rank=0)


def test_required_blocks_are_a_function_of_the_config(monkeypatch) -> None:
    def refuse(self: object, config: object) -> None:
        raise AssertionError("no network may be built to know the blocks")

    monkeypatch.setattr(LosaSide, "__init__", refuse)
    cfg = SideConfig(num_layers=12, dim=8, tokens=5, num_classes=3, layers="evenly:3")
    assert cfg.required_layers == (3, 7, 11)
    lin = SideConfig(num_layers=12, dim=8, tokens=5, num_classes=3, method="linear")
    assert lin.required_layers == (11,)
