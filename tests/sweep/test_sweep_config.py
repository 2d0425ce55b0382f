"""Grid expansion, dedupe, config files and option parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from losa_cache.checks import parse_size as parse_bytes
from losa_cache.cli.sweep_cmds import parse_layer_specs
from losa_cache.sweep import SweepConfig, expand_runs, load_entries


def runs(**kw):  # vit_micro-like: 4 blocks, all stored
    cfg = SweepConfig(store="s.zarr", out="o", **kw)
    return expand_runs(cfg, depth=4, store_layers=[0, 1, 2, 3], default_task="t")


def test_grid_is_a_cross_product_without_duplicates() -> None:
    got = runs(methods=["losa", "linear"], ranks=[4, 8], layers=["evenly:1", "evenly:4", "all"],
               lrs=[0.01, 0.05])
    ids = [r.id for r in got]
    # evenly:4 == all on 4 blocks; linear ignores rank and layers
    assert len(ids) == 2 * 2 * 2 + 2 and len(set(ids)) == len(ids)
    assert "losa-r4-evenly1-lr0.01" in ids and "linear-lr0.05" in ids
    assert not any("all" in i for i in ids)  # evenly:4 came first and won
    lin = next(r for r in got if r.train.method == "linear")
    assert lin.layers_label == "-" and lin.train.out.endswith("runs/t/linear-lr0.01")


def test_tasks_multiply_runs_and_lr_default_dedupes() -> None:
    got = runs(methods=["linear"], lrs=[None, 0.05], tasks=["a", "b"])
    assert [(r.task, r.id) for r in got] == [("a", "linear-lrdefault"), ("b", "linear-lrdefault")]


def test_config_file_entries_expand(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text(json.dumps([{"method": "losa", "rank": [4, 16], "layers": "all"},
                                {"method": "linear", "optimizer": "adamw", "seed": [0, 1]}]))
    got = runs(configs=load_entries(file), seed=0)
    assert [r.id for r in got] == ["losa-r4-all-lrdefault", "losa-r16-all-lrdefault",
                                   "linear-lrdefault-adamw", "linear-lrdefault-adamw-s1"]
    assert got[3].train.seed == 1 and got[2].train.optimizer == "adamw"


def test_config_file_errors_are_clear(tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text(json.dumps([{"method": "losa", "cache": "ram"}]))
    with pytest.raises(ValueError, match=r"unknown keys \['cache'\]"):
        load_entries(file)
    file.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_entries(file)
    with pytest.raises(FileNotFoundError):
        load_entries(tmp_path / "missing.json")


def test_bad_values_fail_early() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        SweepConfig(store="s", methods=["lorax"])
    with pytest.raises(ValueError, match="not both"):
        SweepConfig(store="s", steps=3, epochs=1.0)
    with pytest.raises(ValueError, match="batching"):
        SweepConfig(store="s", batching="fast")
    with pytest.raises(ValueError, match="rank must be"):
        runs(ranks=[0])


def test_parsers() -> None:
    assert parse_layer_specs("evenly:1,evenly:4,all") == ["evenly:1", "evenly:4", "all"]
    assert parse_layer_specs("evenly:1,3,6,-1,all") == ["evenly:1", "3,6,-1", "all"]
    assert parse_layer_specs("1,3;0,3") == ["1,3", "0,3"]
    assert parse_bytes("4GB") == 4 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1e6") == 10**6
    with pytest.raises(ValueError, match="size"):
        parse_bytes("lots")
