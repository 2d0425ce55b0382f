"""losa's Table 4 / 6 variants train from a store's taps and live alike: --start embed
reads the embed tap, --taps attn|mlp|attn+mlp the branch taps (attn:i, mlp:i)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from losa_cache.store import StoreError
from losa_cache.train import TrainConfig, train
from tests.train._train_helpers import LIVE_MICRO, losses

COMMON = {
    "method": "losa",
    "rank": 4,
    "layers": "evenly:2",
    "batch_size": 8,
    "steps": 4,
    "eval_every": 4,
    "log_every": 1,
    "workers": 0,
    "device": "cpu",
    "amp": "fp32",
    "cache": "none",
    "shuffle_buffer": 16,
    "optimizer": "adamw",
    "lr": 1e-2,
}
LIVE = LIVE_MICRO


@pytest.mark.parametrize(
    ("start", "taps"), [("embed", "block"), ("b_last", "attn+mlp"), ("embed", "mlp")]
)
def test_cached_variant_equals_live(
    start: str, taps: str, tap_stores: dict[str, str], tmp_path: Path
) -> None:
    opts = {**COMMON, "start": start, "taps": taps}
    cached = TrainConfig(store=tap_stores["taps"], out=str(tmp_path / "cached"), **opts)
    live = TrainConfig(out=str(tmp_path / "live"), **{**opts, **LIVE})
    mc, ml = train(cached, progress=False), train(live, progress=False)
    torch.testing.assert_close(
        torch.tensor(losses(live.out)), torch.tensor(losses(cached.out)), rtol=1e-5, atol=1e-6
    )
    assert mc["test_acc"] == ml["test_acc"]
    assert mc["learned_params"] == ml["learned_params"] > 0


def test_a_store_without_the_taps_names_them(tap_stores: dict[str, str], tmp_path) -> None:
    cfg = TrainConfig(
        store=tap_stores["parts"], out=str(tmp_path / "x"), **{**COMMON, "taps": "attn"}
    )
    with pytest.raises(StoreError, match="attn"):
        train(cfg, progress=False)
