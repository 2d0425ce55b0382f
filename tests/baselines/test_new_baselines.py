"""The baselines registered from their own modules: ``mlp_only``/``attention_only`` (LoSA
Table 7) and ``adaptformer`` (MIST Table 1). Counts without weights == the built model's
== the papers' printed ones where they print them; a fresh model is the frozen backbone;
train, sweep (== alone, bit for bit), adapter save/load and predict as the other baselines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from losa_cache.backbone import Backbone, create_backbone
from losa_cache.backbone.registry import create_architecture
from losa_cache.baselines import count_baseline, list_baselines
from losa_cache.baselines.adaptformer import ATTR, adapter_params
from losa_cache.baselines.methods import BaselineMethod, prune_for_head, register_baseline
from losa_cache.method_cost import method_cost
from losa_cache.sweep import RunSpec
from losa_cache.train import TrainConfig, train
from tests.baselines.test_baseline_predict import LIVE as PREDICT_LIVE
from tests.baselines.test_baseline_predict import (
    test_predict_gives_the_runs_own_logits_and_accuracy as predicts_own_logits,
)
from tests.baselines.test_baselines import build, cfg
from tests.baselines.test_baselines import (
    test_one_step_of_every_baseline_through_the_cli as one_cli_step,
)
from tests.baselines.test_baselines import (
    test_training_moves_only_what_the_method_trains as moves_only_its_own,
)
from tests.sweep.conftest import adapter_weights, same

torch.set_num_threads(1)

NEW = ("mlp_only", "attention_only", "adaptformer")


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("vit_micro", random_init=True)


def meta(name: str = "vit_micro") -> torch.nn.Module:
    return prune_for_head(create_architecture(name, "meta"))


def test_they_are_registered_baselines() -> None:
    assert set(NEW) <= set(list_baselines())
    with pytest.raises(ValueError, match=r"'adaptformer' is already registered"):
        register_baseline(BaselineMethod("adaptformer", lambda net, c: []))


@pytest.mark.parametrize("method", NEW)
def test_count_without_weights_equals_the_built_model(method: str, backbone: Backbone) -> None:
    model = build(method, backbone)
    assert count_baseline(method, meta(), cfg(method)) == model.num_learned_params() > 0
    plan = method_cost(create_architecture("vit_micro", "meta"), method, rank=2)
    assert plan["learned_params"] == model.num_learned_params()  # plan --method
    assert plan["rank"] == (2 if method == "adaptformer" else None)


def test_counts_are_what_each_method_trains() -> None:
    """mlp/attention only: every block's fc1, fc2 / qkv, proj (weights and biases), no norm;
    adaptformer: 2 D b + b + D per block, nothing of the backbone."""
    net = meta()
    params = dict(net.named_parameters())
    d, depth = int(net.embed_dim), len(net.blocks)

    def part(*layers: str) -> int:
        return sum(p.numel() for n, p in params.items() if n.split(".")[2:4] in layers)

    mlp = part(["mlp", "fc1"], ["mlp", "fc2"])
    attn = part(["attn", "qkv"], ["attn", "proj"])
    assert count_baseline("mlp_only", net, cfg("mlp_only")) == mlp
    assert count_baseline("attention_only", net, cfg("attention_only")) == attn
    assert mlp + attn + part(["norm1", "weight"], ["norm1", "bias"], ["norm2", "weight"],
                             ["norm2", "bias"]) == sum(p.numel() for n, p in params.items()
                                                       if n.startswith("blocks."))  # fmt: skip
    assert count_baseline("adaptformer", net, cfg("adaptformer", rank=5)) == depth * (
        2 * d * 5 + 5 + d
    )


def test_counts_beside_the_papers_printed_ones() -> None:
    """LoSA Table 7 (ViT-g/14, millions): full 1000, only mlp 700, only attention 320, all
    rounded: ours 1011.2, 692.4, 317.4 (within 1.2%). MIST Table 1 (ViT-B/16): AdaptFormer
    0.16 M is bottleneck 8 (156,768), and its 17.60 - 17.57 = 0.03 GMACs; AdaptFormer's
    default 64 gives 1,189,632."""
    g = meta("vit_g")
    printed = {"full": 1000e6, "mlp_only": 700e6, "attention_only": 320e6}
    ours = {m: count_baseline(m, g, cfg(m)) for m in printed}
    assert ours == {"full": 1_011_199_616, "mlp_only": 692_362_240,
                    "attention_only": 317_419_520}  # fmt: skip
    for m, n in printed.items():
        assert ours[m] == pytest.approx(n, rel=0.012), m
    b = meta("vit_b")
    assert count_baseline("adaptformer", b, cfg("adaptformer", rank=8)) == 156_768
    assert round(156_768 / 1e6, 2) == 0.16
    assert count_baseline("adaptformer", b, cfg("adaptformer", rank=64)) == 1_189_632
    assert adapter_params(768, 64) * 12 == 1_189_632
    # MACs: MIST prints 17.60 G for AdaptFormer against 17.57 G for the backbone
    cost = method_cost(create_architecture("vit_b", "meta"), "adaptformer", rank=8)
    assert round(cost["method_gmacs_per_image"], 2) == 0.03


@pytest.mark.parametrize("method", NEW)
def test_a_fresh_model_computes_the_frozen_backbones_b_last(
    method: str, backbone: Backbone
) -> None:
    x = torch.randn(2, 3, 32, 32)
    model = build(method, backbone)
    with torch.no_grad():
        (b_last,) = backbone.intermediates(x, [backbone.depth - 1])
        torch.testing.assert_close(model.backbone.forward_features(x), b_last, rtol=0, atol=0)


def test_adaptformer_adds_s_up_relu_down_of_the_mlp_input_to_each_block(
    backbone: Backbone,
) -> None:
    """block(x) == x1 + MLP(LN2(x1)) + s W_up ReLU(W_down x1), x1 = x + Attn(LN1(x))."""
    model = build("adaptformer", backbone, rank=3, adapter_scale=0.5)
    block = model.backbone.blocks[1]
    adapter = getattr(block, ATTR)
    torch.manual_seed(3)
    with torch.no_grad():
        adapter.up.weight.normal_()
        x = torch.randn(2, 17, 32)
        x1 = x + block.attn(block.norm1(x))
        side = 0.5 * adapter.up(torch.relu(adapter.down(x1)))
        expected = x1 + block.mlp(block.norm2(x1)) + side
        torch.testing.assert_close(block(x), expected)
        assert side.abs().max() > 0


def test_adaptformer_scale_is_an_option() -> None:
    with pytest.raises(ValueError, match=r"--adapter-scale must be .*> 0"):
        cfg("adaptformer", adapter_scale=0)


@pytest.mark.parametrize("method", NEW)
def test_training_moves_only_what_the_method_trains(
    method: str, backbone: Backbone, tmp_path: Path
) -> None:
    moves_only_its_own(method, backbone, tmp_path)


@pytest.mark.parametrize("method", NEW)
def test_one_step_through_the_cli(method: str, tmp_path: Path) -> None:
    one_cli_step(method, tmp_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TrainConfig, dict]]:
    root = tmp_path_factory.mktemp("new-baseline-runs")
    out = {}
    for method in NEW:
        run = TrainConfig(**{**PREDICT_LIVE, "method": method, "out": str(root / method)})
        out[method] = run, train(run, progress=False)
    return out


@pytest.mark.parametrize("method", NEW)
def test_predict_from_the_adapter_gives_the_runs_own_logits(
    method: str, runs: dict, tmp_path: Path
) -> None:
    predicts_own_logits(method, runs, tmp_path)


def test_a_live_sweep_of_the_new_baselines_equals_each_alone(tmp_path: Path) -> None:
    from losa_cache.cli.sweep_cmds import sweep

    app = typer.Typer()
    app.command()(sweep)
    app.command("noop")(lambda: None)
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, [
        "sweep", "--live", "--model", "vit_micro", "--random-init", "--dataset", "demo",
        "--limit", "16", "--out", str(out), "--method", ",".join(NEW), "--rank", "2",
        "--adapter-scale", "0.5", "--lr", "0.01", "--steps", "2", "--batch-size", "4",
        "--eval-every", "2", "--speed-batches", "0", "--device", "cpu", "--workers", "0",
        "--optimizer", "adamw", "--amp", "fp32", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = {r["run"]: r for r in json.loads(res.stdout)["results"]}
    assert sorted(r["method"] for r in rows.values()) == sorted(NEW)
    for r in json.loads((out / "sweep.json").read_text())["runs"]:
        spec = RunSpec.from_dict(r)
        if spec.train.method == "adaptformer":
            assert (spec.train.rank, spec.train.adapter_scale) == (2, 0.5)
        alone = dataclasses.replace(spec.train, out=str(tmp_path / "alone" / spec.id))
        m = train(alone, progress=False)
        assert same(adapter_weights(alone.out), adapter_weights(spec.train.out)), spec.id
        assert m["test_acc"] == rows[spec.id]["test_acc"]
        assert m["learned_params"] == rows[spec.id]["learned_params"]
