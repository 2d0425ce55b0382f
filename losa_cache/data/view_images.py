"""A torch Dataset of augmented views (losa_cache/augment.py): item k = row ``rows[k]`` as
view ``views[k]``, the same tensor whoever makes it (extraction's ``--views``, live
training's ``--augment``), from any worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from losa_cache.augment import AugmentSpec, augment, view_generator
from losa_cache.data.base import ImageDataset
from losa_cache.data.torch_dataset import TorchImages

__all__ = ["ViewImages"]


class ViewImages(TorchImages):
    """Item ``k`` of row ``rows[k]`` as view ``views[k]``: 0 the backbone's eval transform,
    v > 0 :func:`augment` seeded by ``(view_seed, clean[k], v)`` (``clean``: the clean
    store row whose view it is)."""

    _view, _clean = 0, 0  # the item being made (the blank of __init__: clean)

    def __init__(
        self,
        dataset: ImageDataset,
        transform: Any,
        rows: Sequence[int],
        views: Sequence[int],
        clean: Sequence[int],
        spec: AugmentSpec,
        preprocess: dict[str, Any],
        view_seed: int,
    ) -> None:
        super().__init__(dataset, transform, rows)
        self.views = np.asarray(views, dtype=np.int64)
        self.clean = np.asarray(clean, dtype=np.int64)
        self.spec, self.preprocess, self.view_seed = spec, dict(preprocess), int(view_seed)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, bool, str]:
        self._view, self._clean = int(self.views[k]), int(self.clean[k])
        return super().__getitem__(k)

    def _apply(self, image: Any) -> torch.Tensor:
        if self._view == 0 or isinstance(image, list):
            return super()._apply(image)
        gen = view_generator(self.view_seed, self._clean, self._view)
        return augment(image, self.spec, self.preprocess, gen)
