"""Live baselines (full / LoRA / BitFit) on a tiny generated task with a random vit_micro."""

from __future__ import annotations

import math
from pathlib import Path

import baselines as bl
import pytest
import torch

SPEC = {"model": "vit_micro", "random_init": True}
RANK = 4


@pytest.fixture(scope="module")
def backbone() -> bl.Backbone:
    return bl.load_backbone(SPEC)


@pytest.fixture(scope="module")
def train_data(tiny_tasks: Path, backbone: bl.Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    ds = bl.get_dataset(f"vtab1k:{tiny_tasks / 'rotation'}")
    return bl.load_split(ds, "train800", backbone.transform())


def test_param_counts(backbone: bl.Backbone) -> None:
    net = backbone.model
    d, hidden = backbone.dim, net.blocks[0].mlp.fc1.out_features  # 32, 64
    # per block: qkv r(D+3D) + proj r(2D) + fc1 r(D+H) + fc2 r(H+D) = r(8D + 2H)
    analytic = backbone.depth * RANK * (8 * d + 2 * hidden)
    lora = bl.build_model("lora", backbone, 4, rank=RANK)
    assert bl.learned_params(lora) == bl.lora_params(net, RANK) == analytic
    biases = sum(p.numel() for n, p in net.named_parameters() if n.endswith(".bias"))
    assert bl.learned_params(bl.build_model("bitfit", backbone, 4)) == biases
    full = bl.build_model("full", backbone, 4)
    assert bl.learned_params(full) == sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in full.head.parameters()) == 2 * d + (d + 1) * 4
    with pytest.raises(ValueError, match="unknown method"):
        bl.build_model("prompt", backbone, 4)


def test_lora_starts_as_the_backbone(backbone: bl.Backbone) -> None:
    x = torch.randn(2, 3, 32, 32)
    lora = bl.build_model("lora", backbone, 4, rank=RANK)
    with torch.no_grad():
        torch.testing.assert_close(lora.backbone.forward_features(x),
                                   backbone.model.forward_features(x))  # fmt: skip


@pytest.mark.parametrize("method", ["bitfit", "lora"])
def test_frozen_parameters_unchanged(backbone: bl.Backbone, train_data, method: str) -> None:
    model = bl.build_model(method, backbone, 4, rank=RANK)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bl.train(model, *train_data, lr=1e-2, steps=3, batch_size=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and any(n.startswith("backbone.") for n in trainable)
    for name, p in model.named_parameters():
        same = torch.equal(p, before[name])
        assert same != (name in trainable), name  # frozen: unchanged; trainable: moved
    assert all(p.grad is None for p in backbone.model.parameters())  # the original untouched


@pytest.mark.parametrize("method", bl.METHODS)
def test_loss_decreases(backbone: bl.Backbone, train_data, method: str) -> None:
    model = bl.build_model(method, backbone, 4, rank=RANK)
    lr = 1e-3 if method == "full" else 1e-2
    losses = bl.train(model, *train_data, lr=lr, steps=12, batch_size=64)["losses"]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("method", bl.METHODS)
def test_run_baseline_smoke(tiny_tasks: Path, method: str) -> None:
    out = bl.run_baseline(method, tiny_tasks / "location", SPEC, lrs=(1e-3, 3e-3), steps=3,
                          batch_size=8, rank=RANK)  # fmt: skip
    assert out["task"] == "location" and out["best_lr"] in (1e-3, 3e-3)
    assert out["val_acc_best"] == max(out["val_acc"].values())
    assert 0.0 <= out["test_acc"] <= 100.0 and out["learned_params"] > 0
    assert out["images_per_s"] > 0 and out["memory_mb_bs1"] >= 0 and out["wall_s"] > 0
    assert out["memory_kind"] == "cpu_rss_delta" and out["head_params"] == 2 * 32 + 33 * 9


def test_final_on_train800_and_cli(tiny_tasks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = bl.run_baseline("bitfit", tiny_tasks / "count", SPEC, lrs=(1e-3,), steps=2,
                          batch_size=8, final="train800", measure_memory=False)  # fmt: skip
    assert out["final"] == "train800" and math.isnan(out["memory_mb_bs1"])
    rows = bl.main(["--tasks", str(tiny_tasks / "rotation"), "--methods", "bitfit",
                    "--model", "vit_micro", "--random-init", "--steps", "2", "--lrs", "1e-3",
                    "--no-save"])  # fmt: skip
    assert [r["task"] for r in rows] == ["rotation"]
    assert "learned_params" in capsys.readouterr().out
    assert len(bl.task_dirs(str(tiny_tasks))) == 4
    with pytest.raises(ValueError, match="final must be"):
        bl.run_baseline("full", tiny_tasks / "count", SPEC, final="test")
