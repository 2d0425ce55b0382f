"""Extracting clips: the store equals a direct ViViT forward (fp32, exact), via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from losa_cache.backbone import create_backbone
from losa_cache.cli.main import app
from losa_cache.data import TorchImages, get_dataset
from losa_cache.data.base import ImageDecodeError
from losa_cache.data.video import ClipSampling
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError, open_store
from tests.video.test_video_data import bad_videos

pytestmark = pytest.mark.filterwarnings("ignore:.*every labelled image has class:UserWarning")
runner = CliRunner()


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_cli_store_equals_direct_forward_on_clips(
    video_tree: Path, tmp_path: Path, workers: int
) -> None:
    """Decoded in this process, or in the parallel decoding workers (slow: their start-up)."""
    store_path = tmp_path / "clips.zarr"
    result = runner.invoke(
        app,
        ["extract", "--model", "vivit_test", "--random-init", "--dataset",
         f"videofolder:{video_tree}", "--store", str(store_path), "--dtype", "fp32",
         "--layers", "1,3", "--frames", "4", "--stride", "2", "--batch-size", "4",
         "--workers", str(workers), "--device", "cpu", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == 6
    store = open_store(str(store_path))
    layout = store.token_layout
    assert (layout["frames"], layout["grid"], layout["tokens"], layout["clip_frames"]) == (
        2, [4, 4], 33, 4,
    )  # fmt: skip
    fp = store.fingerprint
    assert (fp["frames"], fp["tubelet"], fp["inflation"], fp["stride"], fp["clip"]) == (
        4, 2, "central", 2, "centre",
    )  # fmt: skip

    backbone = create_backbone("vivit_test", random_init=True)
    ds = get_dataset(f"videofolder:{video_tree}", sampling=ClipSampling(4, 2))
    clips = TorchImages(ds, backbone.transform(), list(range(len(ds))))
    live = [[], []]
    for start in (0, 4):  # the extractor's batches (4 rows, one shard)
        x = torch.stack([clips[k][0] for k in range(start, min(start + 4, len(ds)))])
        assert x.shape[1:] == (3, 4, 32, 32)
        for acc, y in zip(live, backbone.intermediates(x, [1, 3]), strict=True):
            acc.append(y)
    for layer, ref in zip([1, 3], live, strict=True):
        got = store.features(layer).read_torch(slice(None))
        assert got.shape == (6, 33, 32)
        assert torch.equal(got, torch.cat(ref)), f"block {layer} differs from the live forward"


def test_bad_videos_skipped_and_named_or_fatal_with_strict(tmp_path: Path) -> None:
    bad_videos(tmp_path / "data" / "cls")
    spec = f"videofolder:{tmp_path / 'data'}"
    common = dict(model="vivit_test", random_init=True, dataset=spec, workers=0, device="cpu")
    path = str(tmp_path / "s.zarr")
    extract(ExtractConfig(store=path, **common), progress=False)
    skipped = {Path(s["source"]).name: s["error"] for s in open_store(path).skipped()}
    assert set(skipped) == {"audio.mp4", "codec.mkv", "corrupt.mp4", "empty.mp4", "truncated.mp4"}
    assert all(name in err for name, err in skipped.items())
    with pytest.raises(ImageDecodeError, match=r"audio\.mp4"):
        extract(ExtractConfig(store=str(tmp_path / "t.zarr"), strict=True, **common))


def test_image_and_video_mismatches_are_refused(video_tree: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "x.zarr")
    videos = f"videofolder:{video_tree}"
    with pytest.raises(ValueError, match="image model"):
        extract(ExtractConfig(model="vit_micro", random_init=True, dataset=videos, store=store))
    with pytest.raises(ValueError, match="image data set"):
        extract(ExtractConfig(model="vivit_test", random_init=True, dataset="demo", store=store))
    with pytest.raises(ValueError, match="--frames is for video"):
        ExtractConfig(model="vit_micro", dataset="demo", store=store, frames=8)
    assert not Path(store).exists()


def test_resume_with_other_clip_sampling_is_refused(video_tree: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    cfg = dict(model="vivit_test", random_init=True, dataset=f"videofolder:{video_tree}",
               store=path, workers=0, device="cpu")  # fmt: skip
    extract(ExtractConfig(**cfg), progress=False)
    assert extract(ExtractConfig(**cfg), progress=False).written == 0  # same settings: resumed
    for change, named in (({"stride": 1}, "stride"), ({"inflation": "average"}, "inflation"),
                          ({"clip": "start"}, "clip"), ({"frames": 6}, "frames")):  # fmt: skip
        with pytest.raises(StoreError, match=named):
            extract(ExtractConfig(**cfg | change), progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stride": 0}, "--stride must be"),
        ({"clip": "middle"}, r"unknown clip 'middle' \(--clip\); choose one of \['centre'"),
        ({"frames": 3}, "multiple of the tubelet depth 2"),
        ({"inflation": "mean"}, r"choose one of \['central', 'average'\]"),
    ],
)
def test_bad_clip_options_fail_before_anything_loads(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExtractConfig(model="vivit_test", dataset="demo", store="unused.zarr", **change)
