"""MIST's memory on the device: LAE recomputes its block branches in backward (one saved
map per block, not two), and ``--max-memory`` bounds the store reader or names what it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.side import SideConfig, create_side
from losa_cache.sweep.measure import PeakTracker
from tests.test_device_install import vit_b_shaped_store
from tests.train._train_helpers import compiler_imports_after

VIT_B_MAP = {"num_layers": 1, "dim": 768, "tokens": 197, "num_classes": 5, "method": "mist",
             "gather": "last"}  # fmt: skip


def step(model: torch.nn.Module, x: torch.Tensor, plain: bool) -> dict[str, torch.Tensor]:
    """One forward + backward; ``plain``: every block as x + f(LN(x)), nothing recomputed."""
    model.zero_grad(set_to_none=True)
    if plain:
        h = model.input_map({0: x})
        for block in model.edge:
            h = h + block.branch(h)
        logits = model.head(h)
    else:
        logits = model({0: x})
    F.cross_entropy(logits, torch.arange(len(x)) % 5).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def perturbed(config: SideConfig) -> torch.nn.Module:
    model = create_side(config).train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("block_fn", ["attention", "mlp"])
def test_recomputed_blocks_give_the_same_gradients(block_fn: str) -> None:
    model = perturbed(SideConfig(**{**VIT_B_MAP, "dim": 16, "tokens": 10, "width": 4,
                                    "block_fn": block_fn}))  # fmt: skip
    x = torch.randn(3, 10, 16)
    plain, recomputed = step(model, x, plain=True), step(model, x, plain=False)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("amp", [False, True])
def test_recomputation_matches_torch_checkpoint_bit_for_bit(amp: bool, monkeypatch) -> None:
    """The blocks' own recomputation (no torch._dynamo) against torch.utils.checkpoint's
    (the blocks' previous one), in fp32 and under bf16 autocast."""
    model = perturbed(SideConfig(**{**VIT_B_MAP, "dim": 16, "tokens": 10, "width": 4}))
    x = torch.randn(3, 10, 16)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        ours = step(model, x, plain=False)
        import losa_cache.side.mist as mist

        monkeypatch.setattr(mist, "recompute", lambda fn, x: checkpoint(fn, x, use_reentrant=False))
        theirs = step(model, x, plain=False)
    for name, grad in theirs.items():
        assert torch.equal(ours[name], grad), name


def test_training_step_does_not_import_torch_dynamo() -> None:
    """torch.utils.checkpoint and torch.optim import torch._dynamo and sympy (70-85 MB)."""
    code = (
        "import torch\n"
        "from losa_cache.side import SideConfig, create_side\n"
        "from losa_cache.train.optim import build_optimizer\n"
        "m = create_side(SideConfig(num_layers=1, dim=16, tokens=10, num_classes=5,\n"
        "                           method='mist', gather='last', width=4)).train()\n"
        "opt = build_optimizer(m, 'adamw', 1e-3, 0.05)\n"
        "m({0: torch.randn(2, 10, 16)}).sum().backward(); opt.step()\n"
    )
    assert compiler_imports_after(code) == []


def test_lae_holds_one_map_per_block_in_training() -> None:
    """ViT-B maps (197 x 768 fp32, batch 8): the recomputing step peaks at least 3
    maps (one per block but the last) below the plain one."""
    model = perturbed(SideConfig(**VIT_B_MAP))
    x = torch.randn(8, 197, 768)
    peaks = {}
    for plain in (True, False):
        tracker = PeakTracker()
        with tracker:
            tracker.track(x, *model.parameters())
            step(model, x, plain)
        peaks[plain] = tracker.peak
    assert peaks[True] - peaks[False] >= 3 * x.nbytes


@pytest.fixture(scope="module")
def vit_b_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return vit_b_shaped_store(tmp_path_factory.mktemp("vitb") / "s.zarr", rows=16)


def train(store: str, out: Path, max_memory: str) -> tuple[int, str]:
    args = ["train", "--store", store, "--out", str(out), "--method", "mist", "--gather",
            "last", "--edge-blocks", "1", "--steps", "1", "--batch-size", "16", "--cache",
            "none", "--device", "cpu", "--workers", "1", "--max-memory", max_memory,
            "--json"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def test_max_memory_takes_a_size_and_bounds_the_reader(vit_b_store: str, tmp_path) -> None:
    """16 ViT-B-shaped fp16 rows: a window (and a batch) of 4.8 MB."""
    code, out = train(vit_b_store, tmp_path / "run", "12MB")
    assert code == 0, out
    mem = json.loads(out[out.index("{") :])["feed"]["reader_memory"]
    assert mem["max_memory"] == 11 << 20  # 12 MB, rounded down to whole MiB
    assert mem["read_ahead"] == 0 and mem["bytes_held"] <= 12e6


def test_max_memory_below_one_window_names_what_it_needs(vit_b_store: str, tmp_path) -> None:
    code, out = train(vit_b_store, tmp_path / "run", "8MB")
    assert code != 0
    assert "--max-memory 7 MiB cannot hold one shuffle window of 16 rows" in out
    assert "give --max-memory >= 10 (MiB)" in out
    assert not (tmp_path / "run" / "adapter.json").exists()
