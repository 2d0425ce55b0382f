"""predict --adapter RUN for live baselines: the saved tensors (lora: peft's folder) loaded
back onto the backbone give the trained run's own logits and its test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from losa_cache.adapter import load_adapter
from losa_cache.backbone import create_backbone
from losa_cache.baselines import BASELINES, IMAGES, BaselineAdapter, build_baseline
from losa_cache.cli.predict_cmds import predict
from losa_cache.predict import image_logits, predict_images
from losa_cache.train import TrainConfig, train
from losa_cache.train.live import LiveSource

torch.set_num_threads(1)

LIVE = dict(
    live=True,
    store=None,
    model="vit_micro",
    random_init=True,
    dataset="demo",
    limit=16,
    workers=0,
    device="cpu",
    batch_size=4,
    rank=2,
    prompt_tokens=3,
    prompt_blocks=2,
    tune_blocks=2,
    steps=3,
    eval_every=3,
    lr=3e-2,
    optimizer="adamw",
    amp="fp32",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TrainConfig, dict]]:
    root = tmp_path_factory.mktemp("baseline-runs")
    out = {}
    for method in BASELINES:
        cfg = TrainConfig(**{**LIVE, "method": method, "out": str(root / method)})
        out[method] = cfg, train(cfg, progress=False)
    return out


def _test_images(cfg: TrainConfig, folder: Path) -> tuple[torch.Tensor, list[Path], np.ndarray]:
    """The test split as the run saw it (preprocessed), as PNG files, and its labels."""
    source = LiveSource(cfg, torch.device("cpu"))
    rows = source.split_rows("test")
    x = torch.stack([source.images[int(r)][0] for r in rows])
    folder.mkdir(exist_ok=True)
    paths = []
    for k, r in enumerate(rows):
        path = folder / f"{k:02d}.png"  # lossless: the same pixels after decoding
        source.dataset.load(int(source.dataset_rows[r])).save(path)
        paths.append(path)
    return x, paths, source.labels[rows]


def _trained_model(cfg: TrainConfig, method: str):
    """The run's own model: its final checkpoint in a fresh build."""
    backbone = create_backbone("vit_micro", random_init=True)
    adapter = json.loads((Path(cfg.out) / "adapter.json").read_text())
    from losa_cache.side import SideConfig

    model = build_baseline(
        method, backbone.model, SideConfig.from_dict(adapter["side_config"]), cfg, cfg.seed
    )
    state = torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("method", BASELINES)
def test_predict_gives_the_runs_own_logits_and_accuracy(method: str, runs, tmp_path) -> None:
    cfg, metrics = runs[method]
    adapter = load_adapter(cfg.out)
    assert isinstance(adapter, BaselineAdapter) and adapter.layers == [IMAGES]
    backbone = create_backbone("vit_micro", random_init=True)
    x, paths, labels = _test_images(cfg, tmp_path / "png")
    rows = predict_images(adapter, backbone, paths, batch_size=5, top_k=1)  # binds
    logits = image_logits(adapter, backbone, x)
    with torch.no_grad():
        own = _trained_model(cfg, method)({IMAGES: x})
    torch.testing.assert_close(logits, own, rtol=0, atol=1e-5)
    top = np.array([r["labels"][0] for r in rows])
    assert (top == logits.argmax(1).numpy()).all()  # files decode to the same pixels
    assert (top == labels).mean() == pytest.approx(metrics["test_acc"])
    fresh = build_baseline(method, backbone.model, adapter.config, cfg, cfg.seed).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh({IMAGES: x}), logits, atol=1e-4)  # training mattered


def test_lora_loads_from_peft_and_refuses_a_mismatched_save(runs, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    cfg, _ = runs["lora"]
    copy = tmp_path / "lora"
    shutil.copytree(cfg.out, copy)
    peft_file = copy / "peft" / "adapter_model.safetensors"
    state = load_file(str(peft_file))
    save_file({k: v + 1 for k, v in state.items()}, str(peft_file))
    with pytest.raises(ValueError, match=r"peft/ and adapter.safetensors hold different LoRA"):
        load_adapter(copy).bind(create_backbone("vit_micro", random_init=True))


def test_predict_cli_runs_a_baseline_adapter(runs, tmp_path) -> None:
    cfg, _ = runs["vpt"]
    _, paths, _ = _test_images(cfg, tmp_path / "png")
    app = typer.Typer()
    app.command("predict")(predict)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--adapter",
            cfg.out,
            "--random-init",
            "--device",
            "cpu",
            "--json",
            *map(str, paths[:2]),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out) == 2 and all(r["error"] is None for r in out)
    other = CliRunner().invoke(
        app,
        [
            "predict",
            "--adapter",
            cfg.out,
            "--random-init",
            "--seed",
            "1",
            "--device",
            "cpu",
            str(paths[0]),
        ],
    )
    assert other.exit_code != 0 and "different backbone" in other.output


def test_a_damaged_baseline_adapter_is_refused(runs, tmp_path) -> None:
    import shutil

    cfg, _ = runs["bitfit"]
    copy = tmp_path / "bitfit"
    shutil.copytree(cfg.out, copy)
    with open(copy / "adapter.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_adapter(copy)


def test_eval_from_a_store_refuses_a_baseline_adapter(runs, make_store) -> None:
    """A baseline changes the backbone, so cached features cannot score it: one line saying
    so and what to use instead (not a confusing 'lacks blocks' error)."""
    from losa_cache.predict import evaluate_store
    from losa_cache.store import StoreError, open_store

    cfg, _ = runs["bitfit"]
    path = make_store("s", limit=4, dtype="float32")
    with pytest.raises(StoreError, match=r"live baseline \(bitfit\).*losa-cache predict"):
        evaluate_store(load_adapter(cfg.out), open_store(path))
