"""Prediction from live images and scoring on cached features, through the library and CLI.

Uses the session ``micro_store`` (fp32, vit_micro random-init seed 0, demo data) and PNG
files of the same demo images, so live and cached predictions can be compared exactly.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from losa_cache.adapter import Adapter, load_adapter, save_adapter
from losa_cache.backbone import Backbone, create_backbone
from losa_cache.cli.predict_cmds import evaluate, predict
from losa_cache.data import get_dataset
from losa_cache.predict import (
    evaluate_store,
    find_images,
    image_logits,
    load_image,
    predict_images,
)
from losa_cache.side import SideConfig, create_side
from losa_cache.store import FeatureStore, StoreError, open_store

N_IMAGES = 6


def micro_backbone(seed: int = 0) -> Backbone:
    return create_backbone("vit_micro", random_init=True, seed=seed)


@pytest.fixture(scope="module")
def store(micro_store: str) -> FeatureStore:
    return open_store(micro_store)


@pytest.fixture(scope="module")
def adapter_dir(store: FeatureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A losa adapter on blocks 1 and 3 with perturbed weights (stand-in for a trained one)."""
    config = SideConfig(
        num_layers=4, dim=32, tokens=17, num_classes=len(store.classes()), rank=4, layers=[1, 3]
    )
    torch.manual_seed(0)  # the same adapter whatever ran before (init uses the global RNG)
    model = create_side(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    meta = {
        "fingerprint": store.fingerprint,
        "classes": store.classes(),
        "task": store.default_task,
    }
    return save_adapter(tmp_path_factory.mktemp("adapter"), model, config, meta)


@pytest.fixture
def adapter(adapter_dir: Path) -> Adapter:
    return load_adapter(adapter_dir)


@pytest.fixture(scope="module")
def images(
    store: FeatureStore, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[Path], np.ndarray]:
    """PNG files of the first test-split images, and their store rows."""
    dataset = get_dataset("demo")
    index = {s.source: i for i, s in enumerate(dataset.samples)}
    rows = store.split_rows("test")[:N_IMAGES]
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for k, row in enumerate(rows):
        path = folder / f"img_{k:02d}.png"  # PNG: lossless, so pixels equal the store's input
        dataset.load(index[str(store.sources[row])]).save(path)
        paths.append(path)
    return paths, rows


def test_live_predictions_equal_cached(adapter: Adapter, store: FeatureStore, images) -> None:
    paths, rows = images
    backbone = micro_backbone()
    x = torch.stack([load_image(p, backbone.transform()) for p in paths])
    with torch.no_grad():
        cached = adapter.model({i: store.features(i).read_torch(rows) for i in adapter.layers})
    live = image_logits(adapter, micro_backbone(), x)
    torch.testing.assert_close(live, cached, atol=1e-5, rtol=1e-4)
    assert torch.equal(live.argmax(-1), cached.argmax(-1))
    assert len(set(cached.argmax(-1).tolist())) > 1  # not a degenerate constant classifier
    preds = predict_images(adapter, backbone, paths, batch_size=4, top_k=len(store.classes()))
    probs, labels = cached.softmax(-1).sort(dim=-1, descending=True)
    assert [r["labels"][0] for r in preds] == labels[:, 0].tolist()
    torch.testing.assert_close(
        torch.tensor([r["probs"] for r in preds]), probs, atol=1e-5, rtol=1e-4
    )
    assert preds[0]["classes"][0] == store.classes()[labels[0, 0]]


def test_bad_image_gets_error_row_others_predicted(adapter: Adapter, images, tmp_path) -> None:
    paths, _ = images
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    inputs = [paths[0], bad, tmp_path / "missing.png", paths[1], paths[2]]
    rows = predict_images(adapter, micro_backbone(), inputs, batch_size=2, top_k=3)
    assert [r["path"] for r in rows] == [str(p) for p in inputs]
    assert [r["error"] is None for r in rows] == [True, False, False, True, True]
    assert "bad.jpg" in rows[1]["error"] and "file not found" in rows[2]["error"]
    assert rows[1]["labels"] == [] and len(rows[3]["labels"]) == 3
    ok = [r["probs"] for r in rows if r["error"] is None]
    assert all(p == sorted(p, reverse=True) and 0 < p[-1] <= p[0] <= 1 for p in ok)


def test_other_backbone_refused(adapter: Adapter, images) -> None:
    with pytest.raises(ValueError, match="weights_sha256") as err:
        predict_images(adapter, micro_backbone(seed=1), images[0][:1])
    assert "Use the backbone the adapter was trained on" in str(err.value)


def test_find_images_expands_folders_sorted(images, tmp_path: Path) -> None:
    paths, _ = images
    (paths[0].parent / "notes.txt").touch()
    assert find_images([paths[0].parent]) == sorted(paths)
    assert find_images([paths[1], tmp_path / "x.png"]) == [paths[1], tmp_path / "x.png"]
    with pytest.raises(FileNotFoundError, match="no images in folder"):
        find_images([tmp_path])


def test_eval_accuracy_matches_hand_computed(adapter: Adapter, store: FeatureStore) -> None:
    result = evaluate_store(adapter, store, split="test", batch_size=20)
    rows = store.split_rows("test")
    feats = {i: torch.from_numpy(store.features(i)[rows]) for i in (1, 3)}
    with torch.no_grad():
        logits = adapter.model(feats)
    labels = torch.from_numpy(store.labels()[rows]).long()
    assert result["count"] == len(rows) == 64
    assert result["accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean())
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    per = result["per_class"]
    assert sum(v["count"] for v in per.values()) == 64
    assert sum(v["count"] * v["accuracy"] for v in per.values()) == pytest.approx(result["correct"])
    present = [v["accuracy"] for v in per.values() if v["count"]]
    assert result["mean_class_accuracy"] == pytest.approx(sum(present) / len(present))
    assert result["task"] == store.default_task


def test_eval_refuses_wrong_store(adapter: Adapter, store: FeatureStore, make_store) -> None:
    with pytest.raises(StoreError, match="unknown split"):
        evaluate_store(adapter, store, split="nope")
    with pytest.raises(StoreError, match="unknown task"):
        evaluate_store(adapter, store, task="nope")
    path = make_store("last", layers="last:1", limit=2, dtype="float32")
    with pytest.raises(
        StoreError, match=r"needs block 1, but the store holds blocks \[3\]: choose --layers"
    ):
        evaluate_store(adapter, open_store(path))
    fake = Adapter(
        adapter.model,
        adapter.config,
        adapter.meta,
        adapter.classes,
        {**adapter.fingerprint, "mean": [0.5, 0.5, 0.5]},
    )
    with pytest.raises(ValueError, match="mean: adapter"):
        evaluate_store(fake, store)


# ------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("predict")(predict)
    app.command("eval")(evaluate)
    return app


def test_cli_predict_json_and_csv(cli, adapter_dir: Path, images, tmp_path) -> None:
    paths, _ = images
    (tmp_path / "bad.png").write_bytes(b"junk")
    args = [
        "predict",
        "--adapter",
        str(adapter_dir),
        "--random-init",
        "--top-k",
        "3",
        str(paths[0].parent),
        str(tmp_path / "bad.png"),
    ]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == N_IMAGES + 1
    assert set(rows[0]) == {"path", "labels", "classes", "probs", "error"}
    assert len(rows[0]["classes"]) == 3 and rows[-1]["error"]
    out = CliRunner().invoke(cli, [*args, "--csv"])
    assert out.exit_code == 0, out.output
    table = list(csv.reader(io.StringIO(out.stdout)))
    assert table[0][:5] == ["path", "error", "label_1", "class_1", "prob_1"]
    assert len(table[0]) == 2 + 3 * 3 and len(table) == N_IMAGES + 2
    assert all(len(r) == len(table[0]) for r in table)
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0 and "top-1" in out.stdout


def test_cli_predict_refuses_other_backbone(cli, adapter_dir: Path, images) -> None:
    out = CliRunner().invoke(
        cli,
        [
            "predict",
            "--adapter",
            str(adapter_dir),
            "--random-init",
            "--seed",
            "1",
            str(images[0][0]),
        ],
    )
    assert out.exit_code == 2
    assert "error:" in out.stderr and "weights_sha256" in out.stderr


def test_cli_eval_json(cli, adapter_dir: Path, adapter: Adapter, micro_store: str) -> None:
    out = CliRunner().invoke(
        cli, ["eval", "--adapter", str(adapter_dir), "--store", micro_store, "--json"]
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["count"] == 64 and set(result["per_class"]) == set(adapter.classes)
    from losa_cache.inference import EvalConfig, evaluate_adapter

    cfg = EvalConfig(adapter=str(adapter_dir), store=micro_store)  # what Python calls
    assert result == json.loads(json.dumps(evaluate_adapter(cfg), default=str))
    out = CliRunner().invoke(cli, ["eval", "--adapter", str(adapter_dir), "--store", micro_store])
    assert out.exit_code == 0 and "accuracy" in out.stdout
    with pytest.raises(ValueError, match="not both"):  # the path is chosen by the config
        EvalConfig(adapter=str(adapter_dir), store=micro_store, dataset="demo")
