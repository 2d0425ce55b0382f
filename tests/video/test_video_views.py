"""Multi-view video evaluation: 1 view == the single-view clip; averaged logits == the mean of
per-view logits; `eval --dataset` and `predict` on videos through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from losa_cache.adapter import Adapter, load_adapter
from losa_cache.cli.main import app
from losa_cache.data.video import clip_views, open_video
from losa_cache.predict import evaluate_store, image_logits
from losa_cache.predict_video import (
    adapter_sampling,
    evaluate_videos,
    predict_videos,
    video_backbone,
    video_logits,
    view_transform,
)
from losa_cache.store import open_store
from losa_cache.train import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore:.*every labelled image has class:UserWarning")
runner = CliRunner()


@pytest.fixture
def adapter_dir(video_store: str, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    train(TrainConfig(store=video_store, out=str(out), rank=2, batch_size=2, steps=3,
                      workers=0, device="cpu", amp="fp32", seed=1, cache="none"),
          progress=False)  # fmt: skip
    return out


def _trained(adapter_dir: Path) -> Adapter:
    adapter = load_adapter(adapter_dir)
    with torch.no_grad():  # 3 steps barely move W_u: make every view count in the logits
        for name, p in adapter.model.named_parameters():
            if ".up." in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    return adapter


def write_wide_video(path: Path, frames: int = 9) -> Path:
    """48x32 frames: a horizontal ramp shifted by the frame index, so every crop differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10, options={"qscale": "1"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for k in range(frames):
            ramp = (np.arange(48)[None, :, None] * 5 + 20 * k) % 250
            img = np.broadcast_to(ramp, (32, 48, 3)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_one_view_is_the_single_view_clip(
    adapter_dir: Path, video_store: str, video_tree: Path
) -> None:
    adapter = _trained(adapter_dir)
    backbone = video_backbone(adapter, random_init=True)
    result = evaluate_videos(
        adapter, backbone, f"videofolder:{video_tree}", split="val", clips=1, crops=1
    )
    store = open_store(video_store)
    cached = evaluate_store(adapter, store, split="val")
    assert result["count"] == cached["count"] == 2
    assert result["loss"] == pytest.approx(cached["loss"], rel=1e-5, abs=1e-6)
    rows = store.split_rows("val")
    source = open_video(video_tree / "val" / "jump" / "v0.mp4")
    one = video_logits(adapter, backbone, source, clips=1, crops=1)  # (1, C)
    with torch.no_grad():
        feats = {i: store.features(i).read_torch(rows[:1]) for i in adapter.layers}
        from_store = adapter.model(feats).float()
    torch.testing.assert_close(one, from_store, rtol=1e-5, atol=1e-5)


def test_averaged_logits_are_the_mean_of_per_view_logits(adapter_dir: Path, tmp_path: Path) -> None:
    adapter = _trained(adapter_dir)
    backbone = video_backbone(adapter, random_init=True)
    path = write_wide_video(tmp_path / "wide.mp4")
    source = open_video(path)
    views = clip_views(source, adapter_sampling(adapter), view_transform(backbone, 3), 2, 3, 32)
    assert views.shape == (6, 3, 4, 32, 32)
    per_view = torch.cat([image_logits(adapter, backbone, v[None]) for v in views])
    assert (per_view - per_view[0]).abs().amax(dim=1)[1:].gt(1e-4).all()  # views differ
    got = video_logits(adapter, backbone, source, clips=2, crops=3, batch_size=4)
    torch.testing.assert_close(got, per_view, rtol=1e-5, atol=1e-5)
    (row,) = predict_videos(adapter, backbone, [path], clips=2, crops=3, top_k=2)
    probs = per_view.mean(dim=0).softmax(dim=-1)
    assert row["labels"] == probs.argsort(descending=True)[:2].tolist()
    assert row["probs"] == pytest.approx(probs.sort(descending=True).values[:2].tolist(), rel=1e-5)


def test_cli_eval_dataset_and_predict_videos(
    adapter_dir: Path, video_store: str, video_tree: Path, tmp_path: Path
) -> None:
    spec = f"videofolder:{video_tree}"
    res = runner.invoke(
        app,
        [
            "eval",
            "--adapter",
            str(adapter_dir),
            "--dataset",
            spec,
            "--split",
            "val",
            "--clips",
            "1",
            "--crops",
            "1",
            "--random-init",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    cached = evaluate_store(load_adapter(adapter_dir), open_store(video_store), split="val")
    assert got["views"] == {"clips": 1, "crops": 1}
    assert got["loss"] == pytest.approx(cached["loss"], rel=1e-5, abs=1e-6)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    wide = write_wide_video(tmp_path / "wide.mp4")
    res = runner.invoke(
        app,
        [
            "predict",
            "--adapter",
            str(adapter_dir),
            str(wide),
            str(bad),
            "--clips",
            "2",
            "--crops",
            "3",
            "--random-init",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["error"] is None and len(rows[0]["labels"]) == 2
    assert "bad.mp4" in rows[1]["error"]
    res = runner.invoke(
        app, ["eval", "--adapter", str(adapter_dir), "--store", video_store, "--dataset", spec]
    )
    assert res.exit_code != 0 and "not both" in res.output
