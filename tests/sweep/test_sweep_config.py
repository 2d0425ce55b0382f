"""Grid expansion, dedupe, config files and option parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from losa_cache.checks import parse_size as parse_bytes
from losa_cache.sweep import SweepConfig, expand_runs, load_entries
from losa_cache.sweep.config import parse_layer_specs
from losa_cache.train import TrainConfig


def runs(**kw):  # vit_micro-like: 4 blocks, all stored
    cfg = SweepConfig(store="s.zarr", out="o", **kw)
    return expand_runs(cfg, depth=4, store_layers=[0, 1, 2, 3], default_task="t")


def test_grid_is_a_cross_product_without_duplicates() -> None:
    got = runs(
        method=["losa", "linear"],
        rank=[4, 8],
        layers=["evenly:1", "evenly:4", "all"],
        lr=[0.01, 0.05],
    )
    ids = [r.id for r in got]
    # evenly:4 == all on 4 blocks; linear ignores rank and layers
    assert len(ids) == 2 * 2 * 2 + 2 and len(set(ids)) == len(ids)
    assert "losa-r4-evenly1-lr0.01" in ids and "linear-lr0.05" in ids
    assert not any("all" in i for i in ids)  # evenly:4 came first and won
    lin = next(r for r in got if r.train.method == "linear")
    assert lin.layers_label == "-" and lin.train.out.endswith("runs/t/linear-lr0.01")


def test_tasks_multiply_runs_and_lr_default_dedupes() -> None:
    got = runs(method=["linear"], lr=[None, 0.05], task=["a", "b"])
    assert [(r.task, r.id) for r in got] == [("a", "linear-lrdefault"), ("b", "linear-lrdefault")]


def test_config_file_entries_expand(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text(
        json.dumps(
            [
                {"method": "losa", "rank": [4, 16], "layers": "all"},
                {"method": "linear", "optimizer": "adamw", "seed": [0, 1]},
            ]
        )
    )
    got = runs(configs=load_entries(file), seed=0)
    assert [r.id for r in got] == [
        "losa-r4-all-lrdefault",
        "losa-r16-all-lrdefault",
        "linear-lrdefault-adamw",
        "linear-lrdefault-adamw-s1",
    ]
    assert got[3].train.seed == 1 and got[2].train.optimizer == "adamw"


def test_config_file_errors_are_clear(tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text(json.dumps([{"method": "losa", "cache": "ram"}]))
    with pytest.raises(ValueError, match=r"unknown keys \['cache'\]"):
        load_entries(file)
    file.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_entries(file)
    with pytest.raises(ValueError, match=r"missing\.json: --config file not found"):
        load_entries(tmp_path / "missing.json")


def test_bad_values_fail_early() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        SweepConfig(store="s", method=["lorax"])
    with pytest.raises(ValueError, match="not both"):
        SweepConfig(store="s", steps=3, epochs=1.0)
    with pytest.raises(ValueError, match="batching"):
        SweepConfig(store="s", batching="fast")
    with pytest.raises(ValueError, match="rank must be"):
        runs(rank=[0])


def test_parsers() -> None:
    assert parse_layer_specs("evenly:1,evenly:4,all") == ["evenly:1", "evenly:4", "all"]
    assert parse_layer_specs("evenly:1,3,6,-1,all") == ["evenly:1", "3,6,-1", "all"]
    assert parse_layer_specs("1,3;0,3") == ["1,3", "0,3"]
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1e6") == 10**6
    with pytest.raises(ValueError, match="size"):
        parse_bytes("lots")


def test_from_dict_round_trips_and_refuses_unknown_keys() -> None:
    cfg = SweepConfig(store="s.zarr", out="o", rank=[4, 8], width=32, stop_at=5)
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ValueError,
        match=r"unknown SweepConfig keys \['stop_after'\]; known "
        r"keys: \[.*'stop_at'",
    ):
        SweepConfig.from_dict({**cfg.to_dict(), "stop_after": 1})


def test_sweep_wide_method_options_reach_the_runs_that_read_them() -> None:
    """MIST's --width/--gather-k, --momentum ... on the sweep's command line: every run that
    reads one gets it (as train would), a method that ignores it keeps one run."""
    got = runs(
        method=["mist", "linear"],
        width=32,
        gather_k=2,
        momentum=0.5,
        label_smoothing=0.1,
        warmup_steps=3,
        stop_at=4,
    )
    mist, linear = (next(r.train for r in got if r.train.method == m) for m in ("mist", "linear"))
    assert len(got) == 2 and (mist.width, mist.gather_k) == (32, 2)
    assert linear.width == TrainConfig.width and linear.gather_k is None
    for t in (mist, linear):
        assert (t.momentum, t.label_smoothing, t.warmup_steps, t.stop_at) == (0.5, 0.1, 3, 4)
    # without gather_k, one run per candidate k of the sweep-wide --k-candidates
    ks = [r.train.gather_k for r in runs(method=["mist"], k_candidates="2,4")]
    assert ks == [2, 4]


def test_size_flags_take_units_in_train_and_sweep_alike() -> None:
    """--max-memory is MiB in both (300MB rounds down), --memory-budget bytes."""
    from losa_cache.cli.options import sizes

    for cls in (TrainConfig, SweepConfig):
        assert sizes(cls, {"max_memory": "300MB", "steps": 3}) == {"max_memory": 286, "steps": 3}
        assert sizes(cls, {"max_memory": "512"})["max_memory"] == 512
        with pytest.raises(ValueError, match=r"--max-memory '10kB' is under 1 MiB"):
            sizes(cls, {"max_memory": "10kB"})
    assert sizes(SweepConfig, {"memory_budget": "2GiB"})["memory_budget"] == 2 * 2**30


def test_sweep_cli_takes_a_max_memory_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sweep --max-memory 300MB` failed ("Input should be a valid integer") where train's
    took it: the config the sweep gets holds the same MiB."""
    from typer.testing import CliRunner

    import losa_cache.sweep as sweep_pkg
    from losa_cache.cli.main import app

    got: list[SweepConfig] = []

    def fake(cfg: SweepConfig, **_: object) -> dict:
        got.append(cfg)
        return {"complete": False, "group": 0}

    monkeypatch.setattr(sweep_pkg, "run_sweep", fake)
    res = CliRunner().invoke(
        app,
        ["sweep", "--store", "s.zarr", "--max-memory", "300MB", "--width", "32", "--stop-at", "2"],
    )
    assert res.exit_code == 0, res.output
    assert (got[0].max_memory, got[0].width, got[0].stop_at) == (286, [32], 2)


def test_config_file_must_be_a_regular_file(tmp_path: Path) -> None:
    """--config reads through the one file opener: a FIFO or a device is named, never
    read (a FIFO would block forever), and a missing file says so."""
    import os

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"fifo.json: not a regular file \(a FIFO/pipe\)"):
        load_entries(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        load_entries("/dev/zero")
    with pytest.raises(ValueError, match="--config file not found"):
        load_entries(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe[")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_entries(bad)
