"""MIST's k chosen on val: one run per candidate k through one engine, the best kept.

A vit_micro store (4 blocks, fp32) with every ``sum:k`` (``sum:all``); thirds of 4 blocks
are k = 1, 3, 4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losa_cache.adapter import load_adapter
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError
from losa_cache.store.subset import subset_store
from losa_cache.train import TrainConfig, train


@pytest.fixture(scope="module")
def sums(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("stores") / "sums.zarr")
    cfg = ExtractConfig(model="vit_micro", random_init=True, dataset="demo", store=path,
                        dtype="float32", taps="sum:all", limit=32, workers=0, chunk_rows=16,
                        shard_rows=32)  # fmt: skip
    extract(cfg, progress=False)
    return path


def config(store: str, out: Path, **overrides: object) -> TrainConfig:
    base = {"store": store, "out": str(out), "method": "mist", "width": 8, "heads": 2,
            "edge_blocks": 1, "optimizer": "adamw", "lr": 3e-3, "batch_size": 16, "steps": 4,
            "workers": 1, "device": "cpu", "amp": "fp32"}  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_adapter(folder).model.state_dict()


def test_k_is_chosen_on_val_among_the_thirds(sums: str, tmp_path: Path) -> None:
    m = train(config(sums, tmp_path / "run"), progress=False)
    choice = m["k_choice"]
    subs = {k: json.loads((tmp_path / "run" / "k" / f"k{k}" / "metrics.json").read_text())
            for k in (1, 3, 4)}  # fmt: skip
    assert choice["candidates"] == {str(k): s["final_val_acc"] for k, s in subs.items()}
    best = max(subs, key=lambda k: (subs[k]["final_val_acc"], -k))
    assert choice["chosen"] == best and m["options"]["gather_k"] == best
    adapter = load_adapter(tmp_path / "run")
    assert adapter.config.gather_k == best and adapter.meta["metrics"]["k_choice"] == choice
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["k_choice"] == choice and saved["test_acc"] == subs[best]["test_acc"]
    # each candidate == that k trained alone (one engine feeds them as a sweep does)
    alone = train(config(sums, tmp_path / "alone", gather_k=best), progress=False)
    assert "k_choice" not in alone
    for name, w in weights(tmp_path / "alone").items():
        assert torch.equal(weights(tmp_path / "run")[name], w), name


def test_gather_k_fixes_k_and_trains_one_run(sums: str, tmp_path: Path) -> None:
    m = train(config(sums, tmp_path / "run", gather_k=3), progress=False)
    assert "k_choice" not in m and not (tmp_path / "run" / "k").exists()
    assert load_adapter(tmp_path / "run").config.gather_k == 3


def test_a_store_of_one_sum_trains_that_k(sums: str, tmp_path: Path) -> None:
    device = str(tmp_path / "device.zarr")
    subset_store(sums, device, taps="sum:3")
    m = train(config(device, tmp_path / "run"), progress=False)
    assert "k_choice" not in m and load_adapter(tmp_path / "run").config.gather_k == 3


def test_missing_candidates_name_the_taps_to_extract_or_subset(sums: str, tmp_path) -> None:
    device = str(tmp_path / "device.zarr")
    subset_store(sums, device, taps="sum:1,4")
    with pytest.raises(StoreError) as err:
        train(config(device, tmp_path / "run"), progress=False)
    text = str(err.value)
    assert "among [1, 3, 4]" in text and "cannot feed sum:3" in text
    assert f"`losa-cache subset {sums} NEW_STORE --taps sum:1,3,4`" in text  # its source
    assert "--k-candidates 1,4" in text and "--gather-k 4" in text and "\n" not in text
    assert not (tmp_path / "run" / "adapter.json").exists()
    m = train(config(device, tmp_path / "listed", k_candidates="1,4"), progress=False)
    assert set(m["k_choice"]["candidates"]) == {"1", "4"}
