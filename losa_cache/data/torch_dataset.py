"""A torch ``Dataset`` over chosen rows of an adapter that never raises on a bad image.

Extraction over millions of files must not die in a DataLoader worker because one JPEG is
truncated: a bad image becomes a zero tensor with ``ok=False`` and the error text, and the
writer records it. Everything held here pickles, so spawn-context workers work (zarr's
event-loop thread makes fork unsafe).
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.context
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import Dataset

from losa_cache.data.base import ImageDataset, ImageDecodeError

Transform = Callable[[Image.Image], torch.Tensor]
#: Blank image (width, height) used to learn the output shape when the adapter's
#: ``meta["image_size"]`` does not state one (any size works for resizing transforms).
DEFAULT_BLANK_SIZE = (224, 224)
#: How often a decoding worker checks that the process that started it still lives.
PARENT_POLL_S = 0.25


def decoding_workers(workers: int) -> int:
    """Image decoding processes: ``workers``, or where negative (auto) one per CPU core
    but one (the main process feeds the model), at most 8: extract's and live training's
    rule, so a 2-core machine gets 1 (PyTorch warns above its core count)."""
    if workers >= 0:
        return workers
    return min(8, max(0, (torch.multiprocessing.cpu_count() or 1) - 1))


class TorchImages(Dataset):
    """Item ``k`` = ``(tensor, row, ok, error)`` for ``row = rows[k]``.

    ``ok`` is False (and ``tensor`` zeros of the usual shape) when the image cannot be
    decoded or the transform fails on it; ``error`` says why ("" when ok). A video row
    (``load`` gives a list of frames) is transformed per frame into (C, F, H, W).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        transform: Transform,
        rows: Sequence[int],
        blank_size: tuple[int, int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.rows = np.asarray(rows, dtype=np.int64)  # compact to pickle, whatever was given
        size = blank_size or tuple(dataset.meta.get("image_size", DEFAULT_BLANK_SIZE))
        blank = self._apply(Image.new("RGB", size))  # once: the shape of a failed item
        frames = getattr(dataset, "clip_frames", None)
        if frames is not None:
            blank = torch.stack([blank] * frames, dim=1)
        self._blank_shape = tuple(blank.shape)
        self._blank_dtype = blank.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, bool, str]:
        row = int(self.rows[k])
        try:
            image = self.dataset.load(row)
        except ImageDecodeError as err:
            return self._failed(row, str(err))
        try:
            return self._apply(image), row, True, ""
        except Exception as err:  # one odd image must not kill a worker; the text says why
            source = self.dataset.samples[row].source
            return self._failed(row, f"transform failed on {source!r}: {type(err).__name__}: {err}")

    def _apply(self, image: Image.Image | list[Image.Image]) -> torch.Tensor:
        if isinstance(image, list):
            return torch.stack([self.transform(frame) for frame in image], dim=1)  # (C, F, H, W)
        return self.transform(image)

    def _failed(self, row: int, error: str) -> tuple[torch.Tensor, int, bool, str]:
        return torch.zeros(self._blank_shape, dtype=self._blank_dtype), row, False, error

    def __repr__(self) -> str:
        return f"TorchImages({self.dataset!r}, rows={len(self)}, item_shape={self._blank_shape})"


@functools.cache
def worker_context() -> multiprocessing.context.BaseContext:
    """Start method for decoding workers; every worker exits soon after its parent dies.

    Never fork: zarr runs an event-loop thread in the parent, and a forked copy of it can
    deadlock. forkserver with torch and the decoders preloaded starts workers in ~0.1 s
    instead of re-importing torch in each (seconds per loader); spawn off Linux.
    """
    if sys.platform != "linux":
        return _WatchedSpawnContext()
    ctx = _WatchedForkServerContext()
    ctx.set_forkserver_preload(["torch", "losa_cache.data", "losa_cache.backbone"])
    return ctx


def exit_with(pid: int, interval: float = PARENT_POLL_S) -> None:
    """Exit this process (``os._exit``) within ``interval`` seconds of process ``pid`` dying.

    A DataLoader worker only checks that *its* parent lives, and a forkserver worker's
    parent is the forkserver, which lives as long as any of its workers do: after a SIGKILL
    of the main process both stayed for minutes. So each worker watches the main process
    itself (psutil: a zombie or a reused pid counts as gone).
    """
    try:
        main = psutil.Process(pid)
    except psutil.NoSuchProcess:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                alive = main.is_running() and main.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                os._exit(1)

    threading.Thread(target=watch, name="losa-exit-with-parent", daemon=True).start()


class _ExitWithParent:
    """Mixin for a Process class: records the creating process, watches it in the child."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watched_pid = os.getpid()

    def run(self) -> None:
        exit_with(self._watched_pid)
        super().run()


class _WatchedSpawnProcess(_ExitWithParent, multiprocessing.context.SpawnProcess):
    pass


class _WatchedSpawnContext(multiprocessing.context.SpawnContext):
    Process = _WatchedSpawnProcess


if sys.platform != "win32":

    class _WatchedForkServerProcess(_ExitWithParent, multiprocessing.context.ForkServerProcess):
        pass

    class _WatchedForkServerContext(multiprocessing.context.ForkServerContext):
        Process = _WatchedForkServerProcess
