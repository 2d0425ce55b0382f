"""Video fixtures: a videofolder tree of tiny PyAV-written clips, and an fp32 store of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.video._videos import write_video

#: vivit_test clips: 2-frame tubelets -> 2 token frames; stride 1 is not the default, so a
#: live path must honour the store's sampling to match it
CLIPS = {"frames": 4, "stride": 1}


@pytest.fixture(scope="session")
def video_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """videofolder layout: train/val split folders, two classes, clips of 6-12 frames
    (written once per session: tests only read it)."""
    root = tmp_path_factory.mktemp("video") / "clips"
    for split, n in (("train", 2), ("val", 1)):
        for c, name in enumerate(("jump", "run")):
            for i in range(n):
                write_video(root / split / name / f"v{i}.mp4", frames=6 + 3 * c + i)
    return root


@pytest.fixture(scope="session")
def video_store(video_tree: Path, make_store: Callable[..., str]) -> str:
    """An fp32 vivit_test (random init, seed 0) store of ``video_tree``, all blocks."""
    return make_store("clips", model="vivit_test", dataset=f"videofolder:{video_tree}",
                      dtype="float32", device="cpu", **CLIPS)  # fmt: skip
