"""The amp rule and bf16 training: bf16 where the hardware has it, converging like fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from losa_cache.train import TrainConfig, train
from losa_cache.train import run as run_module
from losa_cache.train.run import use_amp


def test_auto_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(run_module, "cpu_has_bf16", lambda: True)
    assert use_amp("auto", cpu) and use_amp("auto", cuda) and not use_amp("fp32", cpu)
    monkeypatch.setattr(run_module, "cpu_has_bf16", lambda: False)
    assert not use_amp("auto", cpu) and use_amp("auto", cuda) and use_amp("bf16", cpu)


def test_bf16_feeds_the_side_network_without_an_fp32_copy() -> None:
    """fp16 features enter bf16 compute directly: no fp32 tensor of a batch's size."""
    from losa_cache.side import SideConfig, create_side

    side = SideConfig(
        num_layers=2, dim=16, tokens=9, num_classes=3, rank=2, layers="all", prefix_tokens=1
    )
    model = create_side(side)
    feats = {i: torch.randn(4, 9, 16).half() for i in range(2)}
    big_fp32 = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.float32 and t.numel() >= 4 * 9 * 16:
            big_fp32.append(tuple(t.shape))
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        logits = model(feats)
    assert logits.dtype == torch.bfloat16 and not big_fp32
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.fixture(scope="module")
def demo_store(make_store) -> str:
    """The demo (450 rows per split) through the embedded demo ViT, fp16, 2 blocks."""
    return make_store("demo", model="losa_demo_vit", random_init=False, layers="3,5",
                      dtype="float16", limit=450)  # fmt: skip


@pytest.mark.slow
def test_bf16_converges_like_fp32_on_the_demo(demo_store: str, tmp_path: Path) -> None:
    # 300 steps of 128 (~85 epochs): fp32 48.2 %, bf16 48.7 % when written (chance 11 %)
    common = {
        "store": demo_store,
        "rank": 8,
        "batch_size": 128,
        "steps": 300,
        "optimizer": "adamw",
        "lr": 3e-3,
        "workers": 1,
        "device": "cpu",
        "eval_every": 300,
    }
    res = {
        amp: train(TrainConfig(**common, amp=amp, out=str(tmp_path / amp)), progress=False)
        for amp in ("fp32", "bf16")
    }
    assert res["bf16"]["amp"] == "bf16" and res["fp32"]["amp"] == "fp32"
    assert res["fp32"]["test_acc"] > 0.3  # it learned something (9 classes: chance 0.11)
    assert abs(res["bf16"]["test_acc"] - res["fp32"]["test_acc"]) <= 0.01, res
