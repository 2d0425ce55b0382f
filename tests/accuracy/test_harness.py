"""``pipelines/accuracy.py``: the Table 1 harness (helpers, and a quick end-to-end run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from losa_cache.pipelines import accuracy as acc
from losa_cache.store import open_store


def test_sweep_entries_cover_every_cached_method() -> None:
    entries = acc.sweep_entries((1e-3, 1e-2))
    assert len(entries) == len(acc.CACHED)
    assert all(e["lr"] == [1e-3, 1e-2] for e in entries)
    methods = {e["method"] for e in entries}
    assert {"linear", "losa", "lowrank_mlp", "transformer"} <= methods  # Table 3
    assert {e.get("taps") for e in entries} >= {"attn", "mlp", "attn+mlp"}  # Table 4
    assert any(e.get("start") == "embed" for e in entries)  # Table 6
    mist = [e for e in entries if e["method"] == "mist"]  # MIST, gather only, LAE only
    assert [(e.get("edge_blocks"), e.get("gather")) for e in mist] == [
        (None, None), (0, None), (None, "last")]  # fmt: skip
    assert [acc.entry_name(e) for e in acc.CACHED.values()] == list(acc.CACHED)
    assert set(acc.LIVE) == {"full", "lora", "bitfit", "vpt", "partial"}
    assert acc.Budget().live_tasks == acc.TASKS  # every baseline on every task


def test_a_sweep_row_maps_back_to_its_method_name() -> None:
    row = {
        "method": "losa",
        "rank": 16,
        "layers": "all",
        "options": {"start": "b_last", "taps": "attn+mlp", "alpha_init": 1.0},
    }
    assert acc.method_of(row) == "losa r16 taps=attn+mlp"
    row = {"method": "transformer", "rank": None, "layers": "all", "options": {"hidden": 32}}
    assert acc.method_of(row) == "transformer h32"
    assert acc.method_of({"method": "linear", "rank": None, "layers": "-"}) == "linear"
    mist = {"method": "mist", "rank": None, "layers": "-", "options": {"gather_k": 4}}
    assert acc.method_of(mist) == "mist"  # every k of the best-k-on-val row
    mist["options"] = {"gather_k": 4, "edge_blocks": 0}
    assert acc.method_of(mist) == "mist edge_blocks=0"  # MIST's gather only


def _cell(test_acc: float, params: int = 10) -> dict:
    return {
        "test_acc": test_acc,
        "learned_params": params,
        "images_per_s": 100.0,
        "memory_mb_bs1": 1.0,
        "wall_s": 2.0,
        "best_lr": 1e-3,
    }


def test_summarise_average_only_over_complete_rows() -> None:
    per_task = {"a": {"linear": _cell(50), "full": _cell(70)}, "b": {"linear": _cell(60)}}
    rows = {r["method"]: r for r in acc.summarise(per_task, ["a", "b"])}
    assert rows["linear"]["average"] == 55 and rows["full"]["average"] is None
    assert rows["linear"]["common"] == 50 and rows["full"]["common"] == 70  # task a only
    assert rows["linear"]["wall_s"] == 4.0 and rows["full"]["live"]
    text = acc.markdown(list(rows.values()), ["a", "b"], acc.Budget(), ["a note"])
    assert "| linear | 50.0 | 60.0 | 55.0 | 50.0 |" in text and "- a note" in text


@pytest.mark.slow
def test_quick_end_to_end(tiny_tasks: Path, tmp_path: Path) -> None:
    """One tiny task, cached methods + one live baseline; every output written."""
    results = tmp_path / "results"
    doc = acc.main(
        [
            "--quick",
            "--out",
            str(tmp_path / "w"),
            "--tasks-dir",
            str(tiny_tasks),
            "--tasks",
            "digits",
            "--live",
            "bitfit",
            "--live-tasks",
            "digits",
            "--cached-epochs",
            "0",
            "--parts",
            "cached,live",  # the views rows: tests/accuracy/test_views_rows.py
            "--results",
            str(results),
        ]
    )
    methods = [r["method"] for r in doc["rows"]]
    int8 = [f"{m} int8" for m in acc.INT8]
    assert methods == [*acc.CACHED, *int8, "bitfit"]
    cells = doc["per_task"]["digits"]
    # two lrs: the best always sits at an edge, so each grid grew by one (quick: extend=1)
    assert all(len(cells[m]["lrs"]) == 3 for m in acc.CACHED)
    assert len(cells["bitfit"]["lrs"]) == 2
    assert (
        cells["losa r16 taps=attn+mlp"]["learned_params"]
        == 2 * (cells["losa r16"]["learned_params"])
    )
    assert all(cells[m]["memory_mb_bs1_live"] > cells[m]["memory_mb_bs1"] for m in acc.CACHED)
    for r in doc["rows"]:
        assert 0 <= r["acc"]["digits"] <= 100 and r["wall_s"] > 0
    rows = {r["method"]: r for r in doc["rows"]}
    # the int8 rows train the same side networks from a second store (same params)
    assert all(rows[f"{m} int8"]["learned_params"] == rows[m]["learned_params"] for m in acc.INT8)
    assert open_store(str(tmp_path / "w" / "stores" / "digits-int8.zarr")).dtype == "int8"
    assert rows["linear"]["learned_params"] == 0
    assert rows["losa r4"]["learned_params"] < rows["losa r16"]["learned_params"]
    assert rows["bitfit"]["memory_mb_bs1"] > rows["losa r16"]["memory_mb_bs1"]
    files = sorted(p.suffix for p in results.iterdir())
    assert files == [".json", ".md", ".png"]
    md = Path(doc["paths"]["markdown"]).read_text()
    assert "| losa r16 evenly:3 |" in md and '"epochs": 1.0' in md
    saved = json.loads(Path(doc["paths"]["json"]).read_text())
    assert saved["benchmark"] == "accuracy" and saved["tasks"] == ["digits"]


def test_bad_budget_args_fail_early(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        acc.main(["--epochs", "x"])


def test_redraw_remeasures_only_the_live_baselines_memory(tiny_tasks: Path) -> None:
    """``--redraw``: a run's accuracies kept, its live baselines' training memory measured
    again as every method's (full fine-tuning above BitFit above the fp32 weights)."""
    from losa_cache.backbone import create_backbone

    cells = {"linear": _cell(50), "bitfit": _cell(60), "full": _cell(70)}
    doc = {"tasks": ["digits"], "budget": {"lora_rank": 8}, "per_task": {"digits": cells},
           "backbone": {"model": "vit_micro", "random_init": True},
           "rows": acc.summarise({"digits": cells}, ["digits"])}  # fmt: skip
    new = acc.remeasure_live_memory(doc, tiny_tasks)
    rows = {r["method"]: r for r in new["rows"]}
    assert [r["method"] for r in new["rows"]] == ["linear", "bitfit", "full"]  # order kept
    weights = sum(p.numel() * 4 for p in create_backbone("vit_micro", random_init=True)
                  .model.parameters()) / 2**20  # fmt: skip
    assert rows["full"]["memory_mb_bs1"] > rows["bitfit"]["memory_mb_bs1"] > weights
    assert rows["full"]["memory_mb_bs1_live"] == rows["full"]["memory_mb_bs1"]
    assert rows["linear"]["memory_mb_bs1"] == 1.0 and cells["full"]["memory_mb_bs1"] == 1.0
    assert [r["common"] for r in new["rows"]] == [50, 60, 70]  # accuracies untouched
