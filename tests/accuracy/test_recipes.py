"""The full-size recipes end to end on tiny fixtures in the real layouts (VTAB-1k, iNat2018)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from losa_cache.adapter import load_adapter
from losa_cache.data.splits import carve_splits
from losa_cache.pipelines import inat, vtab
from losa_cache.predict import evaluate_store
from losa_cache.store import StoreError, open_store
from losa_cache.store.splits import add_split

#: Three of the 19 folders, one per Table 1 group.
VTAB_FIXTURE = ("cifar", "eurosat", "clevr_count")
SIZES = {"train800": 8, "val200": 4, "test": 6}
MICRO = ["--model", "vit_micro", "--random-init", "--workers", "0", "--quiet"]
#: the VTAB recipe squashes to --input-size (224 for ViT-B); vit_micro's is 32
VTAB_MICRO = [*MICRO, "--input-size", "32"]


def _image(path: Path, rng: np.random.Generator, label: int) -> None:
    """A 40 px image whose mean colour depends on the label (so there is signal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 60, size=(40, 40, 3)) + 120 * label
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)


def _vtab_task(folder: Path, rng: np.random.Generator) -> None:
    lines: dict[str, list[str]] = {}
    for split, n in SIZES.items():
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}/{i:03d}.jpg"
            _image(folder / rel, rng, i % 2)
            lines[split].append(f"{rel} {i % 2}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vtab-1k")
    rng = np.random.default_rng(0)
    for task in VTAB_FIXTURE:
        _vtab_task(root / task, rng)
    return root


@pytest.fixture(scope="module")
def inat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train2018.json / val2018.json (COCO style) + train_val2018/<supercat>/<cat>/<id>.jpg."""
    root = tmp_path_factory.mktemp("inat2018")
    rng = np.random.default_rng(1)
    cats = [{"id": c, "name": f"species_{c}", "supercategory": "Plantae"} for c in range(3)]
    next_id = 0
    for split, n in (("train", 12), ("val", 6)):
        images, anns = [], []
        for i in range(n):
            cid = i % 3
            name = f"train_val2018/Plantae/{cid}/{next_id:05d}.jpg"
            _image(root / name, rng, cid)
            images.append({"id": next_id, "file_name": name, "width": 40, "height": 40})
            anns.append({"id": next_id, "image_id": next_id, "category_id": cid})
            next_id += 1
        doc = {"images": images, "annotations": anns, "categories": cats}
        (root / f"{split}2018.json").write_text(json.dumps(doc))
    return root


def test_vtab_end_to_end(
    vtab_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    doc = vtab.main(
        [
            "--root",
            str(vtab_root),
            "--out",
            str(out),
            "--tasks",
            ",".join(VTAB_FIXTURE),
            "--methods",
            "linear",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--lrs",
            "1e-3,1e-2",
            *VTAB_MICRO,
        ]
    )
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    assert header.split(" | ")[1:4] == ["cifar", "caltech101", "dtd"]
    assert header.rstrip(" |").endswith("Natural | Specialized | Structured | Mean")
    rows = {
        line.split(" | ")[0][2:]: line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(("| method", "|---"))
    }
    assert set(rows) == {"linear"}
    saved = json.loads((out / "vtab_results.json").read_text())
    assert saved["tasks"] == list(VTAB_FIXTURE)
    for method, acc in saved["results"].items():
        assert set(acc) == set(VTAB_FIXTURE) and all(0 <= a <= 100 for a in acc.values())
        means = saved["means"][method]
        assert means["Natural"] == pytest.approx(acc["cifar"])
        assert means["Mean"] == pytest.approx(
            (acc["cifar"] + acc["eurosat"] + acc["clevr_count"]) / 3
        )
        assert f"{acc['cifar']:.1f}" in rows[method]
    assert doc["per_task"]["cifar"]["linear"]["best_lr"] in (1e-3, 1e-2)


def test_vtab_table1_methods_end_to_end(vtab_root: Path, tmp_path: Path) -> None:
    """The default methods (linear, losa r4/8/16, mist) on one task, squashed to the input
    size, the store holding what mist reads (embed + blocks, summed by the feed)."""
    out = tmp_path / "t1"
    doc = vtab.main(["--root", str(vtab_root), "--out", str(out), "--tasks", "cifar",
                     "--epochs", "1", "--batch-size", "4", "--lrs", "1e-2",
                     *VTAB_MICRO])  # fmt: skip
    assert set(doc["results"]) == {"linear", "losa r4", "losa r8", "losa r16", "mist"}
    assert all(0 <= acc["cifar"] <= 100 for acc in doc["results"].values())
    store = open_store(str(out / "stores" / "cifar.zarr"))
    assert store.fingerprint["crop_mode"] == "squash" and store.fingerprint["crop_pct"] == 1.0
    assert store.fingerprint["input_size"] == [3, 32, 32]
    assert list(store.taps) == ["blocks", "embed"]


def test_vtab_store_of_another_crop_mode_refused(vtab_root: Path, tmp_path: Path) -> None:
    """A rerun into the same --out with --crop-mode center must not reuse squashed features."""
    args = ["--root", str(vtab_root), "--out", str(tmp_path / "r"), "--tasks", "cifar",
            "--methods", "linear", "--epochs", "1", "--lrs", "1e-2", "--batch-size", "4",
            *VTAB_MICRO]  # fmt: skip
    vtab.main(args)
    with pytest.raises(StoreError, match="crop_mode"):
        vtab.main([*args, "--crop-mode", "center"])


def test_vtab_dry_run_and_missing(
    vtab_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--root", str(vtab_root), "--out", str(tmp_path / "x"), *VTAB_MICRO]
    with pytest.raises(SystemExit, match="16 task"):
        vtab.main(args)
    doc = vtab.main([*args, "--allow-missing", "--dry-run"])
    text = capsys.readouterr().out
    assert doc["found"] == list(VTAB_FIXTURE) and len(doc["missing"]) == 16
    assert "3 of 19 tasks found" in text and "missing sun397" in text
    assert not (tmp_path / "x").exists()  # a plan writes nothing


def test_group_means_table_layout() -> None:
    assert len(vtab.TASKS) == 19 and len(set(vtab.TASKS)) == 19
    means = vtab.group_means({"cifar": 80.0, "dtd": 60.0, "kitti": 50.0})
    assert means["Natural"] == 70.0 and means["Specialized"] is None
    assert means["Mean"] == 60.0


def test_inat_selects_on_holdout_reports_val_once(
    inat_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "inat"
    args = ["--data-root", str(inat_root), "--out", str(out), "--layers", "all", "--rank",
            "4", "--steps", "3", "--batch-size", "4", "--lrs", "1e-3,0.3", "--holdout",
            "0.25", *MICRO]  # fmt: skip
    doc = inat.main(args)
    text = capsys.readouterr().out
    assert "store:" in text and "iNat2018 val top-1:" in text
    assert doc["plan"]["splits"] == {"train": 12, "val": 6}
    saved = json.loads((out / "inat_results.json").read_text())
    assert saved["config"]["optimizer"] == "sgd" and saved["config"]["momentum"] == 0.9
    assert saved["config"]["steps"] == 3 and saved["config"]["rank"] == 4
    # selection: a held-out quarter of train, disjoint from the rows trained on
    store = open_store(str(out / "inat2018.zarr"))
    fit, held = store.split_rows("train_fit"), store.split_rows("holdout")
    assert len(held) == 3 and len(fit) == 9 and not set(fit) & set(held)
    assert set(fit) | set(held) == set(store.split_rows("train"))
    assert saved["train_rows"] == 9 and saved["selection_split"] == "holdout"
    accs = {float(k): v for k, v in saved["selection_acc"].items()}
    assert saved["best_lr"] == max(accs, key=lambda lr: accs[lr])
    for lr in accs:  # no run ever looked at val: periodic evals on holdout, no test
        metrics = json.loads((out / f"train-lr{lr:g}" / "metrics.json").read_text())
        assert {e["split"] for e in metrics["evals"]} == {"holdout"}
        assert metrics["test_acc"] is None
    # the report: the chosen run's final adapter scored once on val
    chosen = json.loads((out / f"train-lr{saved['best_lr']:g}" / "metrics.json").read_text())
    once = evaluate_store(load_adapter(chosen["adapter"]), store, split="val")
    assert saved["report_split"] == "val" and saved["report_acc"] == once["accuracy"]
    # a rerun reuses the same held-out rows (add_split is idempotent)
    inat.main(args)
    assert np.array_equal(open_store(str(out / "inat2018.zarr")).split_rows("holdout"), held)


def test_inat_report_test_refused_where_there_is_no_test_split(
    inat_root: Path, tmp_path: Path
) -> None:
    """iNat2018 has no labelled test split: ``--report test`` says so before it extracts."""
    out = tmp_path / "inat"
    args = ["--data-root", str(inat_root), "--out", str(out), "--layers", "all", "--report",
            "test", *MICRO]  # fmt: skip
    for extra in ([], ["--dry-run"]):
        with pytest.raises(SystemExit, match=r"--report test: .* has no test split \(it has "
                           r"train, val;.*report val"):  # fmt: skip
            inat.main([*args, *extra])
    assert not out.exists()


def test_inat_report_test_selects_on_val_and_scores_test_once(
    inat_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a data set that has a labelled test split (iNat's loader taught to read one),
    selection uses val, training all of train (nothing held out), and the chosen run's
    final adapter is scored once on test."""
    from losa_cache.data import inat as inat_data

    root = tmp_path / "root"
    shutil.copytree(inat_root, root)
    rng = np.random.default_rng(2)
    cats = json.loads((root / "val2018.json").read_text())["categories"]
    images, anns = [], []
    for i in range(6):
        name, cid = f"test2018/{i:05d}.jpg", i % 3
        _image(root / name, rng, cid)
        images.append({"id": 100 + i, "file_name": name, "width": 40, "height": 40})
        anns.append({"id": 100 + i, "image_id": 100 + i, "category_id": cid})
    doc = {"images": images, "annotations": anns, "categories": cats}
    (root / "test2018.json").write_text(json.dumps(doc))
    files = {**inat_data.INAT_FILES["inat2018"], "test": "test2018.json"}
    monkeypatch.setitem(inat_data.INAT_FILES, "inat2018", files)
    out = tmp_path / "inat"
    saved = inat.main(["--data-root", str(root), "--out", str(out), "--layers", "all", "--rank",
                       "4", "--steps", "3", "--batch-size", "4", "--lrs", "1e-3,0.3",
                       "--report", "test", *MICRO])  # fmt: skip
    assert saved["plan"]["splits"] == {"train": 12, "val": 6, "test": 6}
    store = open_store(str(out / "inat2018.zarr"))
    assert "holdout" not in store.manifest.splits and "train_fit" not in store.manifest.splits
    assert saved["selection_split"] == "val" and saved["train_rows"] == 12
    accs = {float(k): v for k, v in saved["selection_acc"].items()}
    assert saved["best_lr"] == max(accs, key=lambda lr: accs[lr])
    for lr in accs:  # selection looked at val only; no run scored test
        metrics = json.loads((out / f"train-lr{lr:g}" / "metrics.json").read_text())
        assert {e["split"] for e in metrics["evals"]} == {"val"}
        assert metrics["test_acc"] is None
    chosen = json.loads((out / f"train-lr{saved['best_lr']:g}" / "metrics.json").read_text())
    once = evaluate_store(load_adapter(chosen["adapter"]), store, split="test")
    assert saved["report_split"] == "test" and saved["report_acc"] == once["accuracy"]


def test_add_split_refuses_other_rows(micro_store: str, tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    shutil.copytree(micro_store, path)
    s = open_store(str(path))
    rows, labels = s.split_rows("train"), s.labels(s.default_task)

    def holdout_rows(n: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        carved = carve_splits({"train": rows}, labels, f"holdout={n},seed={seed}")
        return np.asarray(carved["train"]), np.asarray(carved["holdout"])

    fit, held = holdout_rows(0.25, seed=0)
    assert holdout_rows(0.25, seed=0)[1].tolist() == held.tolist()  # seeded
    assert add_split(path, "holdout", held) and not add_split(path, "holdout", held)
    with pytest.raises(StoreError, match="other rows"):
        add_split(path, "holdout", fit)
    assert np.array_equal(open_store(str(path)).split_rows("holdout"), held)
    with pytest.raises(ValueError, match="train"):  # nothing left to train on
        holdout_rows(len(rows))


def test_inat_dry_run_defaults(
    inat_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = inat.main(
        [
            "--data-root",
            str(inat_root),
            "--out",
            str(tmp_path / "i"),
            "--layers",
            "evenly:2",
            *MICRO,
            "--dry-run",
        ]
    )
    assert doc["plan"]["train"] == {**inat.RECIPE}
    assert doc["plan"]["layers"] == [1, 3] or len(doc["plan"]["layers"]) == 2
    assert "store:" in capsys.readouterr().out
    assert not (tmp_path / "i").exists()


def test_vtab_on_a_local_cluster_equals_in_process(vtab_root: Path, tmp_path: Path) -> None:
    """``--cluster local:2``: the task's extraction and its sweep run as Dask tasks on two
    worker processes; the table equals the in-process run's (CPU, same seeds)."""
    args = ["--root", str(vtab_root), "--tasks", "cifar", "--methods", "linear,losa",
            "--ranks", "4", "--epochs", "1", "--batch-size", "4", "--lrs", "1e-3,1e-2",
            "--quiet", *VTAB_MICRO]  # fmt: skip
    here = vtab.main([*args, "--out", str(tmp_path / "here")])
    there = vtab.main([*args, "--out", str(tmp_path / "there"), "--cluster", "local:2"])
    assert there["results"] == here["results"]
    for method, row in here["per_task"]["cifar"].items():
        assert there["per_task"]["cifar"][method]["best_lr"] == row["best_lr"], method
    summary = json.loads((tmp_path / "there/runs/cifar/sweep/results.json").read_text())
    assert summary["summary"]["cluster"]["workers"]  # the sweep ran on the cluster
