"""`losa_cache.extract/train/sweep(...)`: the documented Python API, importable lightly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import losa_cache
from losa_cache.train import TrainConfig

PROBE = """
import json, sys
import losa_cache
light = sorted(m for m in ("losa_cache.train", "losa_cache.sweep", "losa_cache.extract", "timm")
               if m in sys.modules)
import losa_cache.train.config  # the submodule binds losa_cache.train: still callable
print(json.dumps({"loaded": light, "callable": [callable(losa_cache.train),
                  callable(losa_cache.sweep), callable(losa_cache.extract)]}))
"""


def test_import_is_light_and_the_names_stay_callable() -> None:
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    probe = json.loads(res.stdout.splitlines()[-1])
    assert probe == {"loaded": [], "callable": [True, True, True]}


def test_train_by_keywords_equals_train_by_config(micro_store: str, tmp_path: Path) -> None:
    common = {"store": micro_store, "method": "linear", "steps": 3, "batch_size": 16,
              "device": "cpu", "workers": 0}  # fmt: skip
    by_kw = losa_cache.train(out=str(tmp_path / "kw"), progress=False, **common)
    cfg = TrainConfig(out=str(tmp_path / "cfg"), **common)
    by_cfg = losa_cache.train.train(cfg, progress=False)
    assert by_kw["final_val_acc"] == by_cfg["final_val_acc"]
    assert by_kw["train_loss"] == by_cfg["train_loss"]
    assert by_kw["test_acc"] == by_cfg["test_acc"]


def test_config_and_keywords_are_not_mixed(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not both"):
        losa_cache.train(TrainConfig(store="x"), steps=3)
    with pytest.raises(TypeError, match="expected a SweepConfig"):
        losa_cache.sweep(TrainConfig(store="x"))
    with pytest.raises(ValueError, match="--split"):  # the config's own checks
        losa_cache.extract(model="vit_micro", dataset="demo", store=str(tmp_path / "s"),
                           split="val=2.0")  # fmt: skip
