"""Training on clips: a video store picks Eq. 6 by itself; cached (fp32) == live, same seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from losa_cache.adapter import load_adapter
from losa_cache.cli.main import app
from losa_cache.side.mixer import VideoTokenMixer
from losa_cache.train import TrainConfig, train
from tests.video.conftest import CLIPS

pytestmark = pytest.mark.filterwarnings("ignore:.*every labelled image has class:UserWarning")
runner = CliRunner()
RUN = {
    "rank": 2,
    "batch_size": 2,
    "steps": 4,
    "eval_every": 4,
    "log_every": 1,
    "workers": 0,
    "device": "cpu",
    "amp": "fp32",
    "seed": 3,
    "cache": "none",
    "test_split": "val",
}


def _losses(out: str) -> list[float]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def _run(tmp_path: Path, name: str, **cfg: Any) -> tuple[TrainConfig, dict]:
    config = TrainConfig(out=str(tmp_path / name), **RUN, **cfg)
    return config, train(config, progress=False)


def test_cli_train_on_a_video_store_uses_eq6_and_no_temporal_drops_it(
    video_store: str, tmp_path: Path
) -> None:
    counts = {}
    for flag in ("--temporal", "--no-temporal"):
        out = tmp_path / flag
        result = runner.invoke(
            app,
            [
                "train",
                "--store",
                video_store,
                "--method",
                "losa",
                "--rank",
                "2",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--out",
                str(out),
                flag,
            ],
        )
        assert result.exit_code == 0, result.output
        adapter = load_adapter(out)
        model, config = adapter.model, adapter.config
        assert (config.frames, config.spatial_tokens, config.temporal) == (
            2,
            16,
            flag == "--temporal",
        )
        token = [m for m in model.mixers if m.kind == "token"]
        assert token and all(isinstance(m, VideoTokenMixer) for m in token)
        assert all((m.temporal_adaptor is not None) == config.temporal for m in token)
        counts[flag] = model.num_learned_params()
    # one g_temporal per token layer: 2 of vivit_test's 4 blocks, 2*2*2 + 2 + 2 + 1 each
    assert counts["--temporal"] - counts["--no-temporal"] == 2 * (2 * 2 * 2 + 2 + 2 + 1)


def test_cached_fp32_store_and_live_training_agree(
    video_store: str, video_tree: Path, tmp_path: Path
) -> None:
    cached_cfg, cached = _run(tmp_path, "cached", store=video_store)
    live_cfg, live = _run(
        tmp_path,
        "live",
        live=True,
        model="vivit_test",
        random_init=True,
        dataset=f"videofolder:{video_tree}",
        **CLIPS,
    )
    assert live["live"]
    torch.testing.assert_close(
        torch.tensor(_losses(live_cfg.out)),
        torch.tensor(_losses(cached_cfg.out)),
        rtol=1e-5,
        atol=1e-6,
    )
    wc = torch.load(Path(cached_cfg.out) / "checkpoint.pt", weights_only=True)["model"]
    wl = torch.load(Path(live_cfg.out) / "checkpoint.pt", weights_only=True)["model"]
    assert any("temporal_adaptor" in k for k in wc)
    for key in wc:
        torch.testing.assert_close(wl[key], wc[key], rtol=1e-4, atol=1e-5)
    assert live["test_acc"] == cached["test_acc"]
    fp_live = json.loads((Path(live_cfg.out) / "adapter.json").read_text())["fingerprint"]
    fp_cached = json.loads((Path(cached_cfg.out) / "adapter.json").read_text())["fingerprint"]
    assert fp_live == fp_cached  # same clips: frames, stride, clip and inflation recorded


def test_live_video_data_with_an_image_model_is_refused(video_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds videos but vit_micro is an image model"):
        _run(
            tmp_path,
            "bad",
            live=True,
            model="vit_micro",
            random_init=True,
            dataset=f"videofolder:{video_tree}",
        )


def test_train_config_clip_choices_are_the_data_and_backbone_ones() -> None:
    from losa_cache.backbone.vivit import INFLATIONS
    from losa_cache.data.video import CLIP_PROTOCOLS
    from losa_cache.train import config

    assert (config.CLIP_PROTOCOLS, config.INFLATIONS) == (CLIP_PROTOCOLS, INFLATIONS)
