"""Helpers shared by the training tests (imported as ``tests.train._train_helpers``, so
test modules elsewhere that import a training test module find them too)."""

from __future__ import annotations

import json
from pathlib import Path

#: live mode over the rows of the tiny tap stores (vit_micro, demo data, 32 rows a split)
LIVE_MICRO = {
    "live": True,
    "store": None,
    "model": "vit_micro",
    "random_init": True,
    "init_seed": 0,
    "dataset": "demo",
    "limit": 32,
}


def losses(out: str | Path) -> list[float]:
    """The training losses a run wrote to metrics.jsonl, in step order."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
