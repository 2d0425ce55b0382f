"""TrainConfig: JSON round trip, validation messages, the paper's recipe scaled for small data."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from losa_cache.train import TrainConfig


def test_json_round_trip() -> None:
    cfg = TrainConfig(store="s.zarr", rank=8, epochs=2.5, optimizer="adamw", label_smoothing=0.1)
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg
    assert '"losa_cache_version"' in cfg.to_json()
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"store": "s", "bogus": 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank must be an integer >= 1"),
        ({"steps": 10, "epochs": 1.0}, "not both"),
        (
            {"optimizer": "lamb"},
            r"unknown optimizer 'lamb' \(--optimizer\); choose one of \['sgd', "
            r"'adamw'\]",
        ),
        ({"method": "nope"}, "unknown method"),
        ({"cache": "disk"}, "unknown cache"),
        ({"label_smoothing": 1.0}, "--label-smoothing must be a number >= 0 and < 1"),
        ({"lr": -1.0}, "--lr must be a number > 0, got -1.0"),
        ({"batch_size": -5}, "--batch-size must be an integer >= 1, got -5"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
        ({"seed": -1}, "--seed must be an integer >= 0, got -1"),
        ({"steps": 0}, "--steps must be an integer >= 1, got 0"),
        ({"epochs": 0.0}, "--epochs must be a number > 0"),
        ({"momentum": 1.5}, "--momentum must be a number >= 0 and < 1"),
        ({"workers": -2}, "--workers must be an integer >= -1"),
        ({"warmup_steps": -2}, "--warmup-steps must be an integer >= 0"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a number >= 0"),
        ({"shuffle_buffer": 0}, "--shuffle-buffer must be an integer >= 1"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(store="s.zarr", **kwargs)


def test_needs_a_store_or_live_inputs() -> None:
    with pytest.raises(ValueError, match="--store"):
        TrainConfig()
    with pytest.raises(ValueError, match="--model and --dataset"):
        TrainConfig(live=True, model="vit_micro")


def test_plan_is_the_paper_recipe_at_scale() -> None:
    p = TrainConfig(store="s").plan(train_rows=437_513)  # iNat2018
    assert (p["batch_size"], p["steps"], p["warmup_steps"], p["lr"]) == (512, 20_000, 500, 0.05)


def test_plan_scales_down_for_small_data() -> None:
    p = TrainConfig(store="s").plan(train_rows=800)  # VTAB-1k train800
    assert p["batch_size"] == 512 and p["steps"] == 157  # 100 epochs
    assert p["warmup_steps"] == 15  # 10% of a short run
    small = TrainConfig(store="s", steps=40).plan(train_rows=64)
    assert small["batch_size"] == 64 and small["lr"] == pytest.approx(0.05 * 64 / 512)
    assert TrainConfig(store="s", epochs=3).plan(100)["steps"] == 3
    assert TrainConfig(store="s", optimizer="adamw").plan(64)["lr"] == 1e-3  # not scaled


def _method_options() -> list[tuple[str, Any]]:
    """(method, field) for every option field of every registered side network."""
    from losa_cache.side import get_side_class, list_sides

    return [
        (name, f)
        for name in list_sides()
        if (opts := get_side_class(name).options) is not None
        for f in fields(opts)
        if f.name != "layers"
    ]  # TrainConfig's layers: a spec string


@pytest.mark.parametrize(
    ("method", "option"), _method_options(), ids=lambda v: getattr(v, "name", v)
)
def test_every_method_option_comes_from_its_method_module(method: str, option: Any) -> None:
    """The same default and range as the method module's options dataclass (the flag is
    generated from the TrainConfig field, so it exists and validates the same way)."""
    mine = {f.name: f for f in fields(TrainConfig)}
    assert option.name in mine, f"{method}'s option {option.name} has no TrainConfig field"
    f = mine[option.name]
    assert f.default == option.default
    for rule in ("min", "above", "below", "choices"):
        assert f.metadata.get(rule) == option.metadata.get(rule), (option.name, rule)


def test_method_options_reach_the_side_network(micro_store: str) -> None:
    from losa_cache.train.sources import StoreSource, build_side_config

    info = StoreSource(micro_store).info
    cfg = TrainConfig(store=micro_store, method="transformer", hidden=8, alpha_init=0.5)
    side = build_side_config(cfg, info, 3)
    assert side.hidden == 8 and "alpha_init" not in side.to_dict()  # losa's, not its own
    losa = build_side_config(TrainConfig(store=micro_store, alpha_init=0.5), info, 3)
    assert losa.alpha_init == 0.5 and "hidden" not in losa.to_dict()
    with pytest.raises(ValueError, match="--hidden must be an integer >= 1, got 0"):
        TrainConfig(store="s", hidden=0)


def test_clip_flags_without_live_are_refused_not_ignored() -> None:
    """--frames & co. sample clips for live video training; on a store they would be
    silently ignored (its clips were fixed at extraction), so they are an error."""
    import pytest

    from losa_cache.train import TrainConfig

    for extra in ({"frames": 8}, {"stride": 1}, {"clip": "start"}, {"inflation": "average"}):
        name = "--" + next(iter(extra))
        with pytest.raises(ValueError, match=rf"{name}: clip sampling for --live"):
            TrainConfig(store="s.zarr", **extra)
    TrainConfig(store="s.zarr")  # the defaults are fine
    TrainConfig(live=True, model="vivit_test", dataset="videofolder:x", frames=8, stride=1)
