"""A torch ``Dataset`` over chosen rows of an adapter that never raises on a bad image.

Extraction over millions of files must not die in a DataLoader worker because one JPEG is
truncated: a bad image becomes a zero tensor with ``ok=False`` and the error text, and the
writer records it. Everything held here pickles, so spawn-context workers work (zarr's
event-loop thread makes fork unsafe).
"""

from __future__ import annotations

import functools
import multiprocessing
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from losa_cache.data.base import ImageDataset, ImageDecodeError

Transform = Callable[[Image.Image], torch.Tensor]
#: Blank image (width, height) used to learn the output shape when the adapter's
#: ``meta["image_size"]`` does not state one (any size works for resizing transforms).
DEFAULT_BLANK_SIZE = (224, 224)


class TorchImages(Dataset):
    """Item ``k`` = ``(tensor, row, ok, error)`` for ``row = rows[k]``.

    ``ok`` is False (and ``tensor`` zeros of the usual shape) when the image cannot be
    decoded or the transform fails on it; ``error`` says why ("" when ok).
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
        blank = transform(Image.new("RGB", size))  # computed once: the shape of a failed item
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
            return self.transform(image), row, True, ""
        except Exception as err:  # one odd image must not kill a worker; the text says why
            source = self.dataset.samples[row].source
            return self._failed(row, f"transform failed on {source!r}: {type(err).__name__}: {err}")

    def _failed(self, row: int, error: str) -> tuple[torch.Tensor, int, bool, str]:
        return torch.zeros(self._blank_shape, dtype=self._blank_dtype), row, False, error

    def __repr__(self) -> str:
        return f"TorchImages({self.dataset!r}, rows={len(self)}, item_shape={self._blank_shape})"


@functools.cache
def worker_context() -> multiprocessing.context.BaseContext:
    """Start method for decoding workers.

    Never fork: zarr runs an event-loop thread in the parent, and a forked copy of it can
    deadlock. forkserver with torch and the decoders preloaded starts workers in ~0.1 s
    instead of re-importing torch in each (seconds per loader); spawn off Linux.
    """
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "losa_cache.data", "losa_cache.backbone"])
    return ctx
