"""Video fixtures: a videofolder tree of tiny PyAV-written clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.video._videos import write_video


@pytest.fixture
def video_tree(tmp_path: Path) -> Path:
    """videofolder layout: train/val split folders, two classes, clips of 6-12 frames."""
    root = tmp_path / "clips"
    for split, n in (("train", 2), ("val", 1)):
        for c, name in enumerate(("jump", "run")):
            for i in range(n):
                write_video(root / split / name / f"v{i}.mp4", frames=6 + 3 * c + i)
    return root
