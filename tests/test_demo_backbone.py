"""The shipped demo backbone weights (losa_cache/assets/demo_vit.*) and their training script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from losa_cache.backbone.demo import DEMO_MODEL, DEMO_WEIGHTS  # noqa: E402
from pipelines.train_demo_backbone import evaluate, load_split, sha256_file  # noqa: E402

ASSETS = REPO / "losa_cache" / "assets"
WEIGHTS = ASSETS / DEMO_WEIGHTS
META = ASSETS / "demo_vit.json"
DATA = REPO.parent / "shared" / "data" / "cifar10"

needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"CIFAR-10 data folder {DATA} is absent (needs train.tar/test.tar)"
)

JSON_FIELDS = {
    "architecture", "seed", "epochs", "hyperparameters", "train_seconds", "test_top1",
    "torch", "timm", "date", "sha256", "command",
}  # fmt: skip


def _meta() -> dict:
    return json.loads(META.read_text())


def _load_model() -> torch.nn.Module:
    model = timm.create_model(DEMO_MODEL, pretrained=False)
    model.load_state_dict(load_file(str(WEIGHTS)), strict=True)
    return model.eval()


def test_shipped_json_describes_the_weights() -> None:
    meta = _meta()
    assert meta.keys() >= JSON_FIELDS
    assert meta["architecture"] == DEMO_MODEL
    assert meta["sha256"] == sha256_file(WEIGHTS), "demo_vit.json sha256 != safetensors file"
    assert meta["hyperparameters"]["limit"] is None, "shipped weights come from a --limit run"
    assert meta["command"].startswith("python -m pipelines.train_demo_backbone")
    with safe_open(str(WEIGHTS), framework="pt") as f:
        header = f.metadata()
    assert header["architecture"] == DEMO_MODEL
    assert header["test_top1"] == f"{meta['test_top1']:.4f}"


def test_shipped_weights_load_strict_fp32() -> None:
    state = load_file(str(WEIGHTS))
    assert all(t.dtype == torch.float32 for t in state.values())
    assert state["head.weight"].shape == (10, 128)
    model = _load_model()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@needs_data
def test_shipped_weights_accuracy_on_cifar10_test() -> None:
    # First 500 test images in the training script's (class-interleaved, balanced) order.
    x, y = load_split(DATA, "test", limit=500)
    acc = evaluate(_load_model(), x, y)
    assert acc > 0.45, f"top-1 {acc:.3f} on 500 CIFAR-10 test images"


@needs_data
def test_training_script_smoke(tmp_path: Path) -> None:
    out = tmp_path / "assets"
    cmd = [sys.executable, "-m", "pipelines.train_demo_backbone", "--limit", "64",
           "--epochs", "1", "--threads", "1", "--out-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights, meta_path = out / DEMO_WEIGHTS, out / "demo_vit.json"
    assert weights.is_file() and meta_path.is_file()
    meta = json.loads(meta_path.read_text())
    assert meta.keys() >= JSON_FIELDS
    assert meta["architecture"] == DEMO_MODEL and meta["seed"] == 0 and meta["epochs"] == 1
    assert meta["train_images"] == 64 and meta["test_images"] == 64
    assert 0.0 <= meta["test_top1"] <= 1.0
    assert meta["sha256"] == sha256_file(weights)
    assert "--limit 64" in meta["command"] and "--epochs 1" in meta["command"]
    model = timm.create_model(DEMO_MODEL, pretrained=False)
    model.load_state_dict(load_file(str(weights)), strict=True)
