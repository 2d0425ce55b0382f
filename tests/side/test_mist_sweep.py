"""MIST's options in sweeps (grids over width, k, block function, edge blocks; the
ablations as entries) and in the run summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from losa_cache.adapter import load_adapter
from losa_cache.cli.train_cmds import summary
from losa_cache.side import learned_params
from losa_cache.side.mist import ABLATIONS
from losa_cache.sweep import SweepConfig, expand_runs, load_entries, run_sweep


def expand(tmp_path: Path, entries: list[dict]) -> list:
    file = tmp_path / "configs.json"
    file.write_text(json.dumps(entries))
    cfg = SweepConfig(store="s.zarr", out=str(tmp_path / "o"), configs=load_entries(file))
    return expand_runs(cfg, depth=12, store_layers=list(range(12)), default_task="t")


def test_a_grid_over_mist_options_is_one_run_per_combination(tmp_path: Path) -> None:
    got = expand(tmp_path, [
        {"method": "mist", "width": [16, 32], "gather_k": [4, 12],
         "block_fn": ["attention", "mlp"], "edge_blocks": [2, 4]},
        {"method": "losa", "rank": 8, "width": [16, 32]},  # losa ignores width: one run
    ])  # fmt: skip
    mist = [r for r in got if r.train.method == "mist"]
    combos = {(r.train.width, r.train.gather_k, r.train.block_fn, r.train.edge_blocks)
              for r in mist}  # fmt: skip
    assert len(mist) == len(combos) == 16
    assert len([r for r in got if r.train.method == "losa"]) == 1
    assert len({r.id for r in got}) == len(got)
    assert "mist-w32-eb2-mlp-gk4-lrdefault" in {r.id for r in mist}  # readable, no hash


def test_the_ablations_are_sweep_entries(tmp_path: Path) -> None:
    got = expand(tmp_path, [{"method": "mist", "gather_k": 8, **o} for o in ABLATIONS.values()])
    ids = [r.id for r in got]
    assert len(ids) == len(ABLATIONS) == len(set(ids))
    by_id = {r.id: r.train for r in got}
    assert by_id["mist-eb0-gk8-lrdefault"].edge_blocks == 0  # gather only
    assert by_id["mist-last-gk8-lrdefault"].gather == "last"  # LAE only
    assert by_id["mist-dwconv-gk8-lrdefault"].block_fn == "dwconv"


def test_mist_without_gather_k_is_one_run_per_candidate_k(tmp_path: Path) -> None:
    """As ``train`` alone trains them (and keeps the best on val): members == alone."""
    got = expand(tmp_path, [{"method": "mist"}, {"method": "mist", "k_candidates": "6,12"},
                            {"method": "mist", "gather": "last"}])  # fmt: skip
    ks = [(r.train.k_candidates, r.train.gather, r.train.gather_k) for r in got]
    assert ks == [("thirds", "sum", 4), ("thirds", "sum", 8), ("thirds", "sum", 12),
                  ("6,12", "sum", 6), ("6,12", "sum", 12), ("thirds", "last", None)]  # fmt: skip


def test_a_sweep_trains_mist_variants_from_one_store(micro_store: str, tmp_path: Path) -> None:
    file = tmp_path / "configs.json"
    file.write_text(
        json.dumps(
            [
                {
                    "method": "mist",
                    "gather": "last",
                    "width": [4, 8],
                    "block_fn": ["attention", "mlp"],
                    "edge_blocks": 1,
                }
            ]
        )
    )
    cfg = SweepConfig(store=micro_store, out=str(tmp_path / "sweep"), configs=load_entries(file),
                      steps=2, batch_size=16, optimizer="adamw", workers=1, device="cpu",
                      speed_batches=0)  # fmt: skip
    res = run_sweep(cfg, progress=False)
    rows = res["results"]
    assert len(rows) == 4 and all(r["status"] == "trained" for r in rows)
    configs = {
        (a.config.width, a.config.block_fn): (a.config, r["learned_params"])
        for r in rows
        if (a := load_adapter(Path(cfg.out, "runs", r["task"], r["run"])))
    }
    assert set(configs) == {(4, "attention"), (4, "mlp"), (8, "attention"), (8, "mlp")}
    assert all(n == learned_params(c) > 0 for c, n in configs.values())


def test_the_run_summary_prints_mist_settings_not_a_rank(micro_store: str, tmp_path) -> None:
    from losa_cache.train import TrainConfig, train

    cfg = TrainConfig(store=micro_store, out=str(tmp_path / "run"), method="mist",
                      gather="last", width=8, heads=2, edge_blocks=1, steps=1, batch_size=16,
                      workers=1, device="cpu")  # fmt: skip
    m = train(cfg, progress=False)
    head = summary(m).splitlines()[0]
    assert head.startswith("mist width=8 heads=2 edge_blocks=1 block_fn=attention gather=last")
    assert " r=" not in head
    assert m["options"]["width"] == 8


@pytest.mark.parametrize(
    ("method", "expected"), [("losa", "losa r=64 "), ("linear", "linear layers")]
)
def test_other_methods_keep_their_summary(micro_store: str, tmp_path, method, expected) -> None:
    from losa_cache.train import TrainConfig, train

    cfg = TrainConfig(store=micro_store, out=str(tmp_path / "run"), method=method, steps=1,
                      batch_size=16, workers=1, device="cpu")  # fmt: skip
    assert summary(train(cfg, progress=False)).startswith(expected)
