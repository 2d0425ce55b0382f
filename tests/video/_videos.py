"""Video files written with PyAV: tiny 32x32 clips whose frame k is filled with 20*k."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def frame_value(k: int) -> int:
    return (20 * k) % 240


def write_video(path: Path, frames: int, size: int = 32, codec: str = "mpeg4") -> Path:
    """A clip of ``frames`` flat grey frames (frame k = 20*k mod 240), encoded near-losslessly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10, options={"qscale": "1"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            img = np.full((size, size, 3), frame_value(k), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    """An .mp4 holding one audio stream and no video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
