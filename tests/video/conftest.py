"""Video fixtures: a videofolder tree of tiny PyAV-written clips, and an fp32 store of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.video._videos import write_video

#: vivit_test clips: 2-frame tubelets -> 2 token frames; stride 1 is not the default, so a
#: live path must honour the store's sampling to match it
CLIPS = {"frames": 4, "stride": 1}


@pytest.fixture
def video_tree(tmp_path: Path) -> Path:
    """videofolder layout: train/val split folders, two classes, clips of 6-12 frames."""
    root = tmp_path / "clips"
    for split, n in (("train", 2), ("val", 1)):
        for c, name in enumerate(("jump", "run")):
            for i in range(n):
                write_video(root / split / name / f"v{i}.mp4", frames=6 + 3 * c + i)
    return root


@pytest.fixture
def video_store(video_tree: Path, tmp_path: Path) -> str:
    """An fp32 vivit_test (random init, seed 0) store of ``video_tree``, all blocks."""
    from losa_cache.extract import ExtractConfig, extract

    path = str(tmp_path / "clips.zarr")
    spec = f"videofolder:{video_tree}"
    extract(
        ExtractConfig(model="vivit_test", random_init=True, dataset=spec, store=path,
                      dtype="float32", workers=0, device="cpu", **CLIPS),
        progress=False,
    )  # fmt: skip
    return path
