"""Live baselines (full, lora, bitfit, vpt, partial) on a random vit_micro: counts without
weights == the built model's == peft's own, what trains and what stays, and a one-step
run of each through ``losa-cache train --live``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from losa_cache.backbone import Backbone, create_backbone
from losa_cache.backbone.registry import create_architecture
from losa_cache.baselines import BASELINES, IMAGES, LiveBaseline, build_baseline, count_baseline
from losa_cache.baselines.methods import prune_for_head
from losa_cache.side import SideConfig
from losa_cache.train import TrainConfig, train

torch.set_num_threads(1)

LIVE = {
    "live": True,
    "store": None,
    "model": "vit_micro",
    "random_init": True,
    "dataset": "demo",
    "limit": 16,
    "workers": 0,
    "device": "cpu",
    "batch_size": 4,
    "rank": 2,
    "prompt_tokens": 3,
    "prompt_blocks": 2,
    "tune_blocks": 2,
}


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return create_backbone("vit_micro", random_init=True)


def cfg(method: str, **kw: object) -> TrainConfig:
    return TrainConfig(**{**LIVE, "method": method, "out": "unused", **kw})


def head_config(backbone: Backbone) -> SideConfig:
    return SideConfig(
        num_layers=backbone.depth,
        dim=backbone.dim,
        tokens=backbone.tokens,
        num_classes=3,
        method="linear",
        prefix_tokens=backbone.prefix_tokens,
    )


def build(method: str, backbone: Backbone, **kw: object) -> LiveBaseline:
    return build_baseline(method, backbone.model, head_config(backbone), cfg(method, **kw))


@pytest.mark.parametrize("method", BASELINES)
def test_count_without_weights_equals_the_built_model(method: str, backbone: Backbone) -> None:
    meta = prune_for_head(create_architecture("vit_micro", device="meta"))
    model = build(method, backbone)
    assert count_baseline(method, meta, cfg(method)) == model.num_learned_params() > 0


def test_counts_are_what_each_method_trains(backbone: Backbone) -> None:
    net = prune_for_head(create_architecture("vit_micro", device="meta"))
    d, h, depth = backbone.dim, net.blocks[0].mlp.fc1.out_features, backbone.depth
    params = dict(net.named_parameters())

    def count(m: str, **kw: object) -> int:
        return count_baseline(m, net, cfg(m, **kw))

    assert count("full") == sum(p.numel() for p in params.values())
    assert count("bitfit") == sum(p.numel() for n, p in params.items() if n.endswith("bias"))
    assert count("partial") == sum(
        p.numel() for n, p in params.items() if n.startswith(("blocks.2.", "blocks.3."))
    )
    assert count("vpt") == 3 * 2 * d and count("vpt", prompt_blocks=None) == 3 * depth * d
    # per block: qkv r(D + 3D) + proj r(2D) + fc1 r(D + H) + fc2 r(H + D) = r(8D + 2H)
    assert count("lora") == depth * 2 * (8 * d + 2 * h)
    assert count("lora", lora_targets="qkv") == depth * 2 * 4 * d


@pytest.mark.parametrize("targets", ["qkv,proj,fc1,fc2", "qkv", "fc1,fc2"])
def test_lora_count_equals_peft_own(targets: str, backbone: Backbone) -> None:
    model = build("lora", backbone, lora_targets=targets, rank=3)
    trainable, _ = model.peft_model.get_nb_trainable_parameters()
    assert model.num_learned_params() == trainable
    assert (
        count_baseline(
            "lora",
            prune_for_head(create_architecture("vit_micro", "meta")),
            cfg("lora", lora_targets=targets, rank=3),
        )
        == trainable
    )


@pytest.mark.parametrize("method", ["full", "lora", "bitfit", "partial"])
def test_a_fresh_baseline_computes_the_frozen_backbones_b_last(
    method: str, backbone: Backbone
) -> None:
    x = torch.randn(2, 3, 32, 32)
    model = build(method, backbone)
    with torch.no_grad():
        (b_last,) = backbone.intermediates(x, [backbone.depth - 1])
        torch.testing.assert_close(model.backbone.forward_features(x), b_last)


def test_vpt_inserts_prompts_and_keeps_the_token_count(backbone: Backbone) -> None:
    x = torch.randn(2, 3, 32, 32)
    model = build("vpt", backbone)
    with torch.no_grad():
        tokens = model.prompted(x)
        (b_last,) = backbone.intermediates(x, [backbone.depth - 1])
        assert tokens.shape == b_last.shape and not torch.allclose(tokens, b_last)
        model.prompts.zero_()  # prompts matter: other prompts, other tokens
        assert not torch.allclose(model.prompted(x), tokens)


@pytest.mark.parametrize("method", BASELINES)
def test_training_moves_only_what_the_method_trains(
    method: str, backbone: Backbone, tmp_path: Path
) -> None:
    run = cfg(method, out=str(tmp_path / method), steps=2, eval_every=2, lr=1e-2, optimizer="adamw")
    train(run, progress=False)
    fresh = build(method, backbone)
    learned = {n for n, p in fresh.named_parameters() if p.requires_grad}
    after = torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)["model"]
    for name, before in fresh.state_dict().items():
        moved = not torch.equal(after[name], before)
        assert moved == (name in learned), name  # frozen: unchanged; learned: moved


def test_a_baseline_needs_live_and_good_options() -> None:
    with pytest.raises(ValueError, match=r"--method full trains the backbone .* add --live"):
        TrainConfig(method="full", store="somewhere")
    with pytest.raises(ValueError, match=r"--lora-targets 'qkv,attn'.*qkv, proj, fc1, fc2"):
        cfg("lora", lora_targets="qkv,attn")
    with pytest.raises(ValueError, match=r"--prompt-tokens must be an integer >= 1"):
        cfg("vpt", prompt_tokens=0)


def test_out_of_range_blocks_name_the_depth(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match=r"--tune-blocks 9 is out of range: the backbone has 4"):
        build("partial", backbone, tune_blocks=9)


@pytest.mark.parametrize("method", BASELINES)
def test_one_step_of_every_baseline_through_the_cli(method: str, tmp_path: Path) -> None:
    from losa_cache.cli.main import app

    out = tmp_path / method
    args = [
        "train",
        "--live",
        "--method",
        method,
        "--model",
        "vit_micro",
        "--random-init",
        "--dataset",
        "demo",
        "--limit",
        "16",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--rank",
        "2",
        "--prompt-tokens",
        "3",
        "--out",
        str(out),
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    adapter = json.loads((out / "adapter.json").read_text())
    assert metrics["complete"] and metrics["method"] == method and metrics["live"]
    assert adapter["format"] == "losa-cache-live-baseline" and adapter["method"] == method
    assert adapter["weights"]["num_learned_params"] == metrics["learned_params"]
    from safetensors.torch import load_file

    saved = load_file(out / "adapter.safetensors")
    head = sum(t.numel() for n, t in saved.items() if n.startswith("head."))
    assert sum(t.numel() for t in saved.values()) - head == metrics["learned_params"]
    if method == "lora":  # peft's own format beside ours, loadable by peft
        from peft import LoraConfig

        assert LoraConfig.from_pretrained(str(out / "peft")).r == 2
        assert (out / "peft" / "adapter_model.safetensors").is_file()
    assert IMAGES == -1


def test_vit_g_lora_count_beside_table_9() -> None:
    """The README's table: ours on ViT-g/14 is 942,080 r; the paper's Table 9 column is
    2 D r x 5 x 41 to every printed digit (not what peft counts on timm's layers)."""
    meta = prune_for_head(create_architecture("vit_g", "meta"))
    for r in (1, 32, 256):
        assert count_baseline("lora", meta, cfg("lora", rank=r)) == 942_080 * r
    table_9 = {1: 0.58, 4: 2.31, 8: 4.62, 16: 9.24, 32: 18.47, 64: 36.95, 128: 73.89}
    for r, millions in table_9.items():
        assert round(2 * 1408 * r * 5 * 41 / 1e6, 2) == millions


@pytest.mark.slow
def test_vit_g_lora_count_is_peft_own() -> None:
    from losa_cache.baselines.methods import _add_lora, saved_options

    net = prune_for_head(create_architecture("vit_g", "meta")).requires_grad_(False)
    with torch.device("meta"):
        peft_model = _add_lora(net, saved_options({"rank": 32}))["peft_model"]
    assert peft_model.get_nb_trainable_parameters()[0] == 942_080 * 32


def test_an_adapter_rebuilds_from_its_saved_options() -> None:
    """A baseline adapter reads its run's options from the saved train config (not through
    TrainConfig: baselines sit below train); they are the run's own, older runs' missing
    keys take the defaults."""
    from losa_cache.baselines.methods import option_defaults, saved_options

    run = cfg("lora", rank=4, lora_targets="qkv", lora_alpha=8.0, prompt_tokens=3,
              tune_blocks=2)  # fmt: skip
    saved = saved_options(run.to_dict())
    names = option_defaults()
    assert {n: getattr(saved, n) for n in names} == {n: getattr(run, n) for n in names}
    assert saved.rank == 4 and saved.tune_blocks == 2 and saved.lora_alpha == 8.0
    assert vars(saved_options({"rank": 2})) == {**option_defaults(), "rank": 2}
    with pytest.raises(ValueError, match="lora"):
        saved_options({"rank": 2, "lora_targets": "nope"})
