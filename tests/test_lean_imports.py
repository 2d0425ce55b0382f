"""Training from a store needs none of the backbone/image/cluster stack (a lean device install).

A fresh interpreter trains through the CLI and reports the modules it loaded: none of the
heavy ones may be among them (they are imported lazily where extraction or live training
needs them), so ``pip install -r requirements-device.txt`` is enough to train.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("timm", "torchvision", "PIL", "dask", "distributed", "h5py", "matplotlib")

DRIVER = """
import json, sys
from losa_cache.cli.main import app
for line in sys.argv[1:]:
    app(json.loads(line), standalone_mode=False)
    print("MODULES=" + json.dumps(sorted(sys.modules)))
"""


def loaded_after(*commands: list[str]) -> list[set[str]]:
    """Top-level module names one fresh process had imported after each ``losa-cache`` command
    (run in order)."""
    res = subprocess.run(
        [sys.executable, "-c", DRIVER, *map(json.dumps, commands)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [x for x in res.stdout.splitlines() if x.startswith("MODULES=")]
    return [{m.split(".")[0] for m in json.loads(x.removeprefix("MODULES="))} for x in lines]


def test_training_from_a_store_imports_no_heavy_stack(micro_store: str, tmp_path: Path) -> None:
    common = ["--steps", "2", "--batch-size", "16", "--device", "cpu", "--workers", "1", "--json"]
    mist = [
        "train",
        "--store",
        micro_store,
        "--out",
        str(tmp_path / "mist"),
        "--method",
        "mist",
        "--gather",
        "last",
        *common,
    ]
    linear = [
        "train",
        "--store",
        micro_store,
        "--out",
        str(tmp_path / "linear"),
        "--method",
        "linear",
        *common,
    ]
    after_mist, after_linear, after_models = loaded_after(mist, linear, ["models"])
    assert (tmp_path / "mist" / "adapter.json").is_file()  # they really trained
    assert (tmp_path / "linear" / "adapter.json").is_file()
    assert {"torch", "zarr", "losa_cache"} <= after_mist
    assert not after_linear & set(HEAVY), sorted(after_linear & set(HEAVY))
    # the check sees a heavy import: `models` describes the backbones with timm
    assert "timm" in after_models
