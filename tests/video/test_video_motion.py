"""The motion task (time is the label), its premise, the comparison pipeline and the video demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from losa_cache.backbone import create_backbone
from losa_cache.cli.main import app
from losa_cache.data import get_dataset
from losa_cache.data.video import ClipSampling
from losa_cache.pipelines import video
from losa_cache.pipelines.video_tasks import (
    DIRECTIONS,
    SMALL,
    MotionSizes,
    build_motion_task,
    demo_objects,
    moving_clip,
)
from losa_cache.side import SideConfig, create_side
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.filterwarnings("ignore:.*every labelled image has class:UserWarning")


def _clip(direction: int, seed: int = 4) -> np.ndarray:
    obj = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    return moving_clip(obj, direction, MotionSizes(), np.random.default_rng(seed))[0]


def test_left_is_right_backwards_and_up_is_down_backwards() -> None:
    right, left, down, up = (_clip(d) for d in range(4))
    assert np.array_equal(left, right[::-1]) and np.array_equal(up, down[::-1])
    assert not np.array_equal(right, right[::-1])  # it does move
    assert not np.array_equal(np.sort(right, axis=0), np.sort(down, axis=0))  # axes differ


def test_task_layout_balanced_decodable_and_never_overwritten(tmp_path: Path) -> None:
    root = build_motion_task(tmp_path / "m", SMALL, seed=1, objects=demo_objects)
    ds = get_dataset(f"videofolder:{root}", sampling=ClipSampling(SMALL.frames, 1))
    assert sorted(ds.classes) == sorted(DIRECTIONS)
    by_split = ds.split_indices()
    assert {k: len(v) for k, v in by_split.items()} == {"train": 16, "val": 8, "test": 8}
    counts = np.bincount(ds.table.labels[by_split["train"]], minlength=4)
    assert counts.tolist() == [4, 4, 4, 4]
    frames = ds.load(by_split["test"][0])
    assert len(frames) == SMALL.frames and frames[0].size == (32, 32)
    assert json.loads((root / "task.json").read_text())["classes"] == list(DIRECTIONS)
    with pytest.raises(FileExistsError, match="not empty"):
        build_motion_task(root, SMALL, objects=demo_objects)


def _forward(backbone, side, clip: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(clip).float().div(255).permute(3, 0, 1, 2)[None]  # (1, C, F, H, W)
    outs = backbone.intermediates(x, list(range(backbone.depth)))
    return side(dict(enumerate(outs)))


@pytest.mark.parametrize(
    ("method", "temporal", "blind"),
    [("linear", True, True), ("losa", False, True), ("losa", True, False)],
)
def test_only_eq6_sees_the_frame_order_on_vivit_demo(
    method: str, temporal: bool, blind: bool
) -> None:
    """The pipeline's premise: average inflation + zero temporal position embeddings make
    the backbone blind to frame order; only g_temporal can tell a clip from its reverse."""
    backbone = create_backbone("vivit_demo", inflation=video.Recipe().inflation)
    config = SideConfig(
        num_layers=backbone.depth,
        dim=backbone.dim,
        tokens=backbone.tokens,
        num_classes=4,
        method=method,
        temporal=temporal,
        rank=4,
        frames=backbone.time_steps,
        layers="all",
    )
    torch.manual_seed(0)
    side = create_side(config).eval()
    with torch.no_grad():
        for p in side.parameters():
            p.add_(torch.randn(p.shape) * 0.5)  # W_u != 0: every part of g counts
        forwards, backwards = (_forward(backbone, side, c) for c in (_clip(0), _clip(1)))
    same = torch.allclose(forwards, backwards, rtol=1e-4, atol=1e-4)
    assert same == blind, (forwards, backwards)


def test_cli_demo_video_tiny(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--video", "--tiny", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert set(r["runs"]) == {"linear", "losa_spatial", "losa"}
    assert r["objects"] == "demo" and r["extract"]["written"] == 32
    runs = r["runs"]
    assert runs["linear"]["learned_params"] == 0 < runs["losa_spatial"]["learned_params"]
    assert runs["losa"]["learned_params"] > runs["losa_spatial"]["learned_params"]
    assert len(r["predictions"]) == 1 and "predicted" in r["predictions"][0]
    from losa_cache.store import open_store

    fp = open_store(r["store"]).fingerprint
    assert (fp["model"], fp["inflation"], fp["frames"]) == ("vivit_demo", "average", 8)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cifar10").is_dir(), reason="needs ../shared/data")
def test_pipeline_tiny_on_cifar_objects(tmp_path: Path) -> None:
    assert video.main(["--out", str(tmp_path), "--tiny"]) == 0
    doc = json.loads((tmp_path / "video.json").read_text())
    assert doc["objects"] == "cifar10" and set(doc["runs"]) == set(video.RUNS)
    assert "torch" in doc["versions"] and doc["date"]
    sources = (tmp_path / "clips" / "sources.tsv").read_text().splitlines()
    assert len(sources) == 1 + 32 and "cifar" not in sources[1] and ".jpg" in sources[1]
