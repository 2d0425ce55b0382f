"""``plan --method M``: learned parameters and GMACs of every side network and live
baseline from the architecture alone (meta device), equal to the built networks'."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from losa_cache.backbone import create_backbone
from losa_cache.backbone.registry import create_architecture
from losa_cache.baselines import BASELINES, build_baseline
from losa_cache.method_cost import method_cost
from losa_cache.plan import plan
from losa_cache.side import SideConfig, create_side, list_sides
from losa_cache.train import TrainConfig

METHODS = [*list_sides(), *BASELINES]


@pytest.mark.parametrize("method", METHODS)
def test_counts_equal_the_built_networks(method: str) -> None:
    """vit_micro: D 32, T 17, 4 blocks; rank 2, hidden 8."""
    cost = method_cost(create_architecture("vit_micro", "meta"), method, rank=2, hidden=8)
    real = create_backbone("vit_micro", random_init=True)
    head = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=3, method="linear")
    if method in BASELINES:
        cfg = TrainConfig(live=True, model="vit_micro", dataset="demo", method=method, rank=2)
        built = build_baseline(method, real.model, head, cfg).num_learned_params()
    else:
        side = SideConfig(
            num_layers=4, dim=32, tokens=17, num_classes=3, method=method, rank=2, hidden=8
        )
        built = create_side(side).num_learned_params()
    assert cost["learned_params"] == built
    assert cost["method_gflops_per_image"] == pytest.approx(2 * cost["method_gmacs_per_image"])
    assert cost["total_gmacs_per_image"] == pytest.approx(
        cost["backbone_gmacs_per_image"] + cost["method_gmacs_per_image"]
    )


def test_gmacs_are_the_papers_gflops_for_vit_b_and_vit_g() -> None:
    """The paper's tables: ViT-B/16 17.6, ViT-g/14 267.4 'GFLOPs' (= GMACs)."""
    b = method_cost(create_architecture("vit_b", "meta"), "full")
    assert b["backbone_gmacs_per_image"] == pytest.approx(17.6, rel=0.01)
    g = method_cost(create_architecture("vit_g", "meta"), "losa", rank=64)
    assert g["backbone_gmacs_per_image"] == pytest.approx(267.4, rel=0.01)
    assert g["learned_params"] == 4_298_300  # Table 5, all 40 layers


def test_side_macs_are_the_matmuls_of_their_layers() -> None:
    """ViT-B r 16, all 12 blocks: every LoSA layer costs 2 r T D MACs, channel or token;
    lowrank_mlp the same; linear nothing; LoRA r 8 adds r (in + out) T per adapted layer."""
    net = create_architecture("vit_b", "meta")
    t, d = 197, 768
    losa = method_cost(net, "losa", rank=16)["method_gmacs_per_image"] * 1e9
    assert losa == pytest.approx(12 * 2 * 16 * t * d, rel=2e-3)
    assert method_cost(net, "lowrank_mlp", rank=16)[
        "method_gmacs_per_image"
    ] * 1e9 == pytest.approx(losa)
    assert method_cost(net, "linear")["method_gmacs_per_image"] == 0
    lora = method_cost(net, "lora", rank=8)
    assert lora["method_gmacs_per_image"] * 1e9 == pytest.approx(
        12 * t * 8 * ((d + 3 * d) + 2 * d + 2 * (d + 4 * d)), rel=1e-6
    )
    assert lora["learned_params"] == 12 * 8 * ((d + 3 * d) + 2 * d + 2 * (d + 4 * d))


def test_plan_cli_prices_a_method() -> None:
    from losa_cache.cli.main import app

    args = ["plan", "--model", "vit_micro", "--method", "vpt", "--no-measure", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cost = json.loads(res.stdout)["method_cost"]
    assert cost["kind"] == "live baseline" and cost["learned_params"] == 10 * 4 * 32
    text = CliRunner().invoke(app, args[:-1], env={"COLUMNS": "200"}).output
    assert "GMACs/image" in text and "GFLOPs" in text
    bad = CliRunner().invoke(
        app, ["plan", "--model", "vit_micro", "--method", "nope", "--no-measure"]
    )
    assert bad.exit_code != 0 and "unknown method 'nope'; choose one of" in bad.output
    assert "lora" in bad.output and "transformer" in bad.output


def test_plan_function_keeps_rank_only_counts() -> None:
    p = plan("vit_micro", "demo", rank=2, measure=False)
    assert "method_cost" not in p and p["learned_params"] > 0
