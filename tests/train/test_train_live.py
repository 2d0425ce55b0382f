"""Live mode: same batches and results as cached training; the backbone never trains."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from losa_cache.train import train
from losa_cache.train.live import LiveSource
from losa_cache.train.order import RowOrder
from tests.train._train_helpers import losses

LIVE = {
    "live": True,
    "store": None,
    "model": "vit_micro",
    "random_init": True,
    "init_seed": 0,
    "dataset": "demo",
    "limit": 64,
    "workers": 0,
}


def test_cached_and_live_training_agree(make_cfg) -> None:
    common = {"steps": 6, "shuffle_buffer": 32, "cache": "none", "eval_every": 6}
    cached = make_cfg("cached", **common)
    live = make_cfg("live", **common, **LIVE)
    mc, ml = train(cached, progress=False), train(live, progress=False)
    assert ml["live"] and ml["buffer_rows"] == mc["buffer_rows"] == 32
    torch.testing.assert_close(
        torch.tensor(losses(live.out)), torch.tensor(losses(cached.out)), rtol=1e-5, atol=1e-6
    )
    wc = torch.load(Path(cached.out) / "checkpoint.pt", weights_only=True)["model"]
    wl = torch.load(Path(live.out) / "checkpoint.pt", weights_only=True)["model"]
    for key in wc:
        torch.testing.assert_close(wl[key], wc[key], rtol=1e-4, atol=1e-5)
    assert ml["test_acc"] == mc["test_acc"]
    fp_live = json.loads((Path(live.out) / "adapter.json").read_text())["fingerprint"]
    fp_cached = json.loads((Path(cached.out) / "adapter.json").read_text())["fingerprint"]
    assert fp_live["weights_sha256"] == fp_cached["weights_sha256"]


def test_backbone_gets_no_gradient_and_does_not_change(make_cfg) -> None:
    cfg = make_cfg("frozen", steps=2, **LIVE)
    source = LiveSource(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in source.backbone.model.state_dict().items()}
    assert not any(p.requires_grad for p in source.backbone.model.parameters())
    rows = source.split_rows("train")
    feed = source.feed(RowOrder(rows, 32, 0), rows, (1, 3), 16, torch.device("cpu"), 0)
    piece = next(feed.pieces(0, loop=True, shuffle=True))
    feats, labels = piece.feats, torch.from_numpy(source.task(None).labels[piece.rows])
    assert not any(f.requires_grad or f.is_inference() for f in feats.values())
    side = torch.nn.Linear(32, len(source.task(None).classes))
    loss = torch.nn.functional.cross_entropy(side(feats[3][:, 0]), labels)
    loss.backward()
    assert all(p.grad is None for p in source.backbone.model.parameters())
    after = source.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after)
