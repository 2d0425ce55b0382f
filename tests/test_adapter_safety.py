"""Adapters load only their own folder's files, and only with the sha256 they record."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from losa_cache.adapter import ADAPTER_JSON, ADAPTER_WEIGHTS, AdapterError, load_adapter
from losa_cache.adapter import save_adapter as save
from losa_cache.cli.main import app
from losa_cache.side import SideConfig, create_side
from losa_cache.store import open_store

runner = CliRunner()


@pytest.fixture
def adapter_dir(micro_store: str, tmp_path: Path) -> Path:
    """A losa adapter for the micro store's backbone (perturbed weights)."""
    store = open_store(micro_store)
    config = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=len(store.classes()),
                        rank=4, layers=[1, 3])  # fmt: skip
    model = create_side(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    meta = {"fingerprint": store.fingerprint, "classes": store.classes()}
    return save(tmp_path / "ad", model, config, meta)


def edit_record(folder: Path, **weights: object) -> None:
    """Change (or, with None, drop) keys of adapter.json's "weights" object."""
    record = json.loads((folder / ADAPTER_JSON).read_text())
    for key, value in weights.items():
        if value is None:
            record["weights"].pop(key, None)
        else:
            record["weights"][key] = value
    (folder / ADAPTER_JSON).write_text(json.dumps(record))


def outside_copy(adapter_dir: Path) -> Path:
    """The adapter's weights, copied to a folder beside it."""
    other = adapter_dir.parent / "elsewhere"
    other.mkdir()
    return Path(shutil.copy(adapter_dir / ADAPTER_WEIGHTS, other / ADAPTER_WEIGHTS))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "subdir"])
def test_weights_named_outside_the_folder_are_refused(adapter_dir: Path, how: str) -> None:
    target = outside_copy(adapter_dir)  # same bytes, same sha256: only the place is wrong
    name = {"absolute": str(target), "dotdot": f"../elsewhere/{ADAPTER_WEIGHTS}",
            "subdir": f"sub/{ADAPTER_WEIGHTS}"}[how]  # fmt: skip
    if how == "subdir":
        (adapter_dir / "sub").mkdir()
        shutil.copy(target, adapter_dir / name)
    edit_record(adapter_dir, file=name)
    with pytest.raises(AdapterError, match="not in the adapter's folder"):
        load_adapter(adapter_dir)


def test_a_symlink_out_of_the_folder_is_refused(adapter_dir: Path) -> None:
    target = outside_copy(adapter_dir)
    (adapter_dir / "linked.safetensors").symlink_to(target)
    edit_record(adapter_dir, file="linked.safetensors")
    with pytest.raises(AdapterError, match="not in the adapter's folder"):
        load_adapter(adapter_dir)
    (adapter_dir / ADAPTER_WEIGHTS).unlink()  # the default name as a symlink out
    (adapter_dir / ADAPTER_WEIGHTS).symlink_to(target)
    edit_record(adapter_dir, file=ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match="not in the adapter's folder"):
        load_adapter(adapter_dir)


def test_a_symlink_inside_the_folder_and_a_linked_folder_load(adapter_dir: Path) -> None:
    os.replace(adapter_dir / ADAPTER_WEIGHTS, adapter_dir / "w.safetensors")
    (adapter_dir / ADAPTER_WEIGHTS).symlink_to("w.safetensors")
    link = adapter_dir.parent / "latest"
    link.symlink_to(adapter_dir, target_is_directory=True)
    assert load_adapter(link).classes == load_adapter(adapter_dir).classes


def test_missing_sha256_is_refused_with_the_fix(adapter_dir: Path) -> None:
    edit_record(adapter_dir, sha256=None)
    with pytest.raises(AdapterError, match="records no valid sha256") as e:
        load_adapter(adapter_dir)
    record = json.loads((adapter_dir / ADAPTER_JSON).read_text())
    edit_record(adapter_dir, sha256=suggested(e.value))  # following the message loads it
    assert load_adapter(adapter_dir).classes == record["classes"]


def suggested(error: BaseException) -> str:
    """The sha256 the refusal suggests recording."""
    return str(error).split('"sha256": "')[1].split('"')[0]


def nan_weights_without_sha256(adapter_dir: Path) -> None:
    state = load_file(adapter_dir / ADAPTER_WEIGHTS)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in state.items()}  # fmt: skip
    save_file(state, str(adapter_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    edit_record(adapter_dir, sha256=None)


def test_nan_weights_without_sha256_do_not_predict(adapter_dir: Path, tmp_path: Path) -> None:
    nan_weights_without_sha256(adapter_dir)
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    out = runner.invoke(app, ["predict", "--adapter", str(adapter_dir), "--random-init",
                              str(image), "--json"])  # fmt: skip
    assert out.exit_code != 0
    assert "sha256" in out.output and '"probs"' not in out.output


def test_nan_weights_are_refused_even_with_a_matching_sha256(adapter_dir: Path) -> None:
    nan_weights_without_sha256(adapter_dir)
    with pytest.raises(AdapterError, match="records no valid sha256") as e:
        load_adapter(adapter_dir)
    edit_record(adapter_dir, sha256=suggested(e.value))
    with pytest.raises(AdapterError, match="NaN or inf"):
        load_adapter(adapter_dir)
