"""The planner: store prices per tap and dtype, backbone GMACs, and what fits a disk budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from losa_cache.backbone.registry import create_architecture
from losa_cache.cli.main import app
from losa_cache.compute import vit_macs
from losa_cache.plan import (
    BUDGET_DTYPES,
    Backbone,
    budget_configs,
    budget_row,
    plan,
    plan_budget,
    side_params,
    split_sizes,
)

runner = CliRunner()
G_TOKENS, G_DIM, INAT_TRAIN = 257, 1408, 437_513


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_vit_g_inat2018_all_blocks_fp16_train_split_is_12_7_tb() -> None:
    p = plan("vit_g", "inat2018", "all", "fp16", measure=False)
    assert p["bytes_by_split"]["train"] == G_TOKENS * G_DIM * 2 * 40 * INAT_TRAIN
    assert p["bytes_total"] == sum(p["bytes_by_split"].values())
    out = cli("plan", "--model", "vit_g", "--dataset", "inat2018", "--no-measure")
    assert "train 12.7 TB" in out


@pytest.mark.parametrize(("model", "paper_gmacs"), [("vit_g", 267.4), ("vit_b", 17.6)])
def test_backbone_gmacs_as_the_losa_paper_counts(model: str, paper_gmacs: float) -> None:
    bb = plan(model, "demo", measure=False)["backbone"]
    assert bb["gmacs_per_image"] == pytest.approx(paper_gmacs, rel=0.01)
    assert bb["gflops_per_image"] == 2 * bb["gmacs_per_image"]
    assert sum(bb["macs_by_part"].values()) == pytest.approx(bb["gmacs_per_image"] * 1e9)
    assert "multiply-accumulates" in bb["counted"]


@pytest.mark.parametrize(("model", "upto"), [("vit_micro", None), ("vit_test", 1), ("demo", -1)])
def test_macs_equal_torch_flop_counter_on_a_real_forward(model: str, upto: int | None) -> None:
    net = create_architecture(model).eval()
    if upto is not None:
        net.blocks = net.blocks[: upto + 1]
    for block in net.blocks:
        block.attn.fused_attn = False  # explicit matmuls, which the counter sees
    x = torch.randn(1, 3, *net.patch_embed.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.forward_features(x)
    assert counter.get_total_flops() == 2 * vit_macs(net).total  # torch: 1 MAC = 2 FLOPs


def test_int8_pays_one_byte_a_value_plus_a_fp16_scale_per_token_row() -> None:
    p8 = plan("vit_g", "inat2018", "evenly:4", "int8", measure=False)
    assert p8["bytes_per_image"] == 4 * G_TOKENS * (G_DIM + 2)
    assert p8["bytes_by_split"]["train"] == p8["bytes_per_image"] * INAT_TRAIN


def test_sum_k_prices_one_map_per_k_and_runs_the_first_k_blocks() -> None:
    p = plan("vit_g", "inat2018", taps="sum:4,8", dtype="bf16", measure=False)
    assert p["taps"] == ["sum:4", "sum:8"] and p["arrays"] == 2
    assert p["bytes_per_image"] == 2 * G_TOKENS * G_DIM * 2
    assert p["backbone"]["blocks_run"] == 8  # G_8 = z0 + b_1 + ... + b_8
    embed = plan("vit_g", "inat2018", taps="embed", measure=False)
    assert embed["backbone"]["blocks_run"] == 0
    every = plan("vit_b", "demo", taps="blocks,embed,attn,mlp,sum:all", measure=False)
    per_array = 197 * 768 * 2
    assert every["bytes_per_image_by_tap"]["attn"] == 12 * per_array
    assert every["arrays"] == 12 * 3 + 1 + 12
    assert every["transfer_mb_per_image"] == every["bytes_per_image"] / 1e6


def test_vtab1k_train800val200_is_counted_once() -> None:
    p = plan("vit_b", "vtab1k", "all", "fp16", measure=False)
    assert p["images"] == 1000  # train800 + val200 are inside train800val200
    assert p["bytes_total"] == 12 * 197 * 768 * 2 * 1000  # DESIGN.md: 3.6 GB


def test_budget_lists_exactly_the_configurations_that_fit_biggest_first() -> None:
    b = plan_budget("vit_g", "inat2018", "500GB")
    assert b["budget_bytes"] == 500 * 10**9
    sizes = [r["bytes_total"] for r in b["fits"]]
    assert sizes and all(s <= b["budget_bytes"] for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    listed = {(r["layers"] or "all", r["taps"], r["dtype"]) for r in b["fits"]}
    bb, split = Backbone.load("vit_g"), split_sizes("inat2018")
    for layers, taps in budget_configs(40):
        for dtype in BUDGET_DTYPES:
            row = budget_row(bb, split, layers, taps, dtype)
            assert ((layers, taps, dtype) in listed) == (row["bytes_total"] <= 500 * 10**9)
    assert ("evenly:8", "blocks", "float16") not in listed  # 2.5 TB train split
    assert ("evenly:4", "blocks", "int8") not in listed  # ~0.6 TB train split
    assert ("all", "sum:40", "float16") in listed  # one summed map: 317 GB train split
    assert not b["live_only"]


def test_budget_rows_carry_the_default_losa_params_they_support() -> None:
    b = plan_budget("vit_b", "vtab1k", "4GB")
    for r in b["fits"]:
        if r["taps"].startswith("sum:"):
            assert r["losa_params"] is None and "MIST" in r["feeds"]
        else:
            layers = tuple(range(12)) if r["layers"] == "all" else r["layers"]
            assert r["losa_params"] == side_params("losa", 64, layers, 12, 768, 197, 1)
    assert b["losa_default_rank"] == 64
    assert any(r["layers"] == "all" and r["dtype"] == "float16" for r in b["fits"])


def test_budget_too_small_for_any_losa_store_says_live_training() -> None:
    b = plan_budget("vit_g", "inat2018", "100GB")
    assert b["live_only"] and b["fits"] == []
    assert "--live" in b["advice"] and "167.4 GB" in b["advice"]


def test_budget_json_round_trips_through_the_cli() -> None:
    out = cli("plan", "--model", "vit_b", "--dataset", "vtab1k", "--budget", "1GB", "--json")
    assert json.loads(out) == json.loads(json.dumps(plan_budget("vit_b", "vtab1k", "1GB")))
    text = cli("plan", "--model", "vit_b", "--dataset", "vtab1k", "--budget", "1GB")
    assert "biggest first" in text and "LoSA r=64 params" in text


def test_bad_budget_is_one_line_with_the_fix() -> None:
    result = runner.invoke(app, ["plan", "--model", "vit_b", "--budget", "lots"])
    assert result.exit_code == 2 and "e.g. 500GB" in result.output


def test_a_vtab1k_task_folder_counts_each_image_once(tmp_path: Path) -> None:
    lists = {
        "train800": ["a.png 0", "b.png 1", "c.png 0"],
        "val200": ["d.png 1", "e.png 0"],
        "test": ["f.png 0", "g.png 1"],
    }
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    for name in "abcdefg":
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    p = plan("vit_micro", f"vtab1k:{tmp_path}", measure=False)
    assert p["splits"]["train800val200"] == 5 and p["images"] == 7 and p["sizes_note"] is None
    assert p["bytes_total"] == 7 * p["bytes_per_image"]


def test_the_plan_command_is_run_plan_of_its_config() -> None:
    """`plan` is wiring: its JSON is run_plan of the PlanConfig its flags make (the budget
    parsed as a size), and its text is plan_text of that."""
    from losa_cache.plan import PlanConfig, plan_text, run_plan

    flags = ["--model", "vit_micro", "--dataset", "demo", "--taps", "blocks,embed",
             "--rank", "4", "--views", "2", "--no-measure"]  # fmt: skip
    cfg = PlanConfig(model="vit_micro", dataset="demo", taps="blocks,embed", rank=4, views=2,
                     measure=False)  # fmt: skip
    res = runner.invoke(app, ["plan", *flags, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(json.dumps(run_plan(cfg), default=str))
    text = runner.invoke(app, ["plan", *flags], env={"COLUMNS": "300"}).stdout
    assert text.strip() == plan_text(run_plan(cfg)).strip()
    budget = runner.invoke(app, ["plan", "--model", "vit_micro", "--budget", "20MB", "--json"])
    assert json.loads(budget.stdout)["budget_bytes"] == 20_000_000
    assert json.loads(budget.stdout) == json.loads(json.dumps(
        run_plan(PlanConfig(model="vit_micro", budget=20_000_000)), default=str))  # fmt: skip
