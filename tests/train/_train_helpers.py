"""Helpers shared by the training tests (imported as ``tests.train._train_helpers``, so
test modules elsewhere that import a training test module find them too)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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


def compiler_imports_after(code: str) -> list[str]:
    """The torch._dynamo / sympy modules loaded once ``code`` ran in a fresh interpreter
    (torch.optim.Optimizer and torch.utils.checkpoint load them: 70-85 MB of RSS)."""
    probe = (
        "\nimport sys\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'sympy'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code + probe],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])
