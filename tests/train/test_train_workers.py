"""``--workers -1`` (the default, auto): one rule for extract's and live training's image
decoding processes, a fixed thread count for the store reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losa_cache.data.torch_dataset import decoding_workers
from losa_cache.sweep import SweepConfig
from losa_cache.train import TrainConfig
from losa_cache.train.order import RowOrder


@pytest.mark.parametrize(("cores", "auto"), [(1, 0), (2, 1), (4, 3), (32, 8)])
def test_auto_decoding_workers_leave_a_core_and_cap_at_8(
    monkeypatch, cores: int, auto: int
) -> None:
    monkeypatch.setattr(torch.multiprocessing, "cpu_count", lambda: cores)
    assert decoding_workers(-1) == auto
    assert decoding_workers(3) == 3 and decoding_workers(0) == 0  # as given


def test_train_and_sweep_default_to_auto() -> None:
    assert TrainConfig(store="s.zarr").workers == SweepConfig(store="s.zarr").workers == -1
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(store="s.zarr", workers=-2)


def test_a_live_feed_under_auto_decodes_in_the_resolved_number(monkeypatch) -> None:
    from losa_cache.train.live import LiveSource

    monkeypatch.setattr(torch.multiprocessing, "cpu_count", lambda: 2)  # this project's CI
    cfg = TrainConfig(
        live=True, model="vit_micro", random_init=True, dataset="demo", limit=8, store=None
    )
    source = LiveSource(cfg, torch.device("cpu"))
    rows = np.arange(8)
    feed = source.feed(RowOrder(rows, 8, 0), rows, [0], 4, torch.device("cpu"), -1)
    try:
        assert feed.workers == 1
    finally:
        feed.close()
        source.close()
