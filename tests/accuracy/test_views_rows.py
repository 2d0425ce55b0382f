"""The harness's views and few-shot rows (pipelines/accuracy_views.py) on a tiny task.

The rows only, at a tiny budget: the numbers of the real harness are not run here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from losa_cache.pipelines import accuracy
from losa_cache.pipelines.accuracy_plots import shot_series, view_series
from losa_cache.pipelines.accuracy_views import pick_shots, views_part
from losa_cache.store import open_store

SIZES = {"train800": 8, "val200": 4, "test": 4}


def _task(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {}
    for split, n in SIZES.items():
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}/{i:03d}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 60, size=(40, 40, 3)) + 120 * (i % 2)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / rel)
            lines[split].append(f"{rel} {i % 2}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


def test_pick_shots_is_seeded_and_per_class() -> None:
    labels = [0, 1, 0, 1, 0, 2, 0]
    two = pick_shots(labels, 2)
    assert np.array_equal(two, pick_shots(labels, 2))
    picked = np.asarray(labels)[two]
    assert (picked == 0).sum() == 2 and (picked == 1).sum() == 2 and (picked == 2).sum() == 1


def test_views_and_fewshot_rows_tiny(tmp_path: Path) -> None:
    task = _task(tmp_path / "tasks" / "tiny")
    out = tmp_path / "run"
    budget = accuracy.Budget(epochs=1.0, batch_size=4, cached_lrs=(1e-2,), extend=0,
                             live_lrs={"full": (1e-4,)}, live_tasks=("tiny",),
                             speed_batches=0)  # fmt: skip
    spec = {"model": "vit_micro", "random_init": True, "seed": 0}
    rows = views_part(task, out, spec, budget, {"views", "mild", "fewshot"}, accuracy.memo,
                      counts=(0, 2), shots=(1,), few_views=(0, 2), mild=(2,))  # fmt: skip
    cached = {f"{m}{t}" for m in ("losa r16", "mist")
              for t in (" V=0", " V=2", " 1-shot", " 1-shot V=2", " V=2 rrc:0.5-1")}  # fmt: skip
    assert set(rows) == cached | {"full aug V=2", "full 1-shot aug V=2", "full aug V=2 rrc:0.5-1"}
    for name, r in rows.items():
        assert 0 <= r["test_acc"] <= 100, name
        assert r["views"] == (0 if name.endswith(("V=0", "1-shot")) else 2), name
        # what each row is, for the plots: its family, its augmentation, its shots
        assert r["family"] == name.split(" V=")[0].split(" 1-shot")[0].split(" aug")[0], name
        mild = name.endswith("rrc:0.5-1")
        assert r["augment"] == (
            None if r["views"] == 0 else "rrc:0.5-1" if mild else "rrc:0.08-1,flip"
        )
        assert r.get("shots") == (1 if "1-shot" in name else None), name
    assert rows["losa r16 V=2"]["extract_s"] > 0 and rows["losa r16 V=2"]["store_bytes"] > 0
    assert rows["mist 1-shot V=2"]["shots"] == 1
    # the k-shot rows: one image per class of train800, in the store and the live folder
    store = open_store(str(out / "stores" / "tiny-views2.zarr"))
    shot = store.split_rows("train1shot")
    assert len(shot) == 2 and set(shot) <= set(store.split_rows("train800"))
    assert sorted(store.labels()[shot].tolist()) == [0, 1]
    assert len((out / "fewshot" / "tiny-1shot" / "train800.txt").read_text().split("\n")) == 3
    assert store.num_images == 16 + 2 * (8 + 4)  # views of train800val200 (the final split)
    # the milder augmentation has a store of its own, recorded as such, with other views
    mild = open_store(str(out / "stores" / "tiny-views2-rrc0.5-1.zarr"))
    assert mild.num_images == store.num_images
    assert mild.manifest.identity["views"]["augment"] == "rrc:0.5-1"
    assert store.manifest.identity["views"]["augment"] == "rrc:0.08-1,flip"
    assert np.array_equal(store.labels(), mild.labels())
    first_view = int(store.group["index/views"][0, 1])
    assert first_view >= 16 and mild.group["index/views"][0, 1] == first_view
    assert not np.array_equal(store.features(0)[first_view], mild.features(0)[first_view])
    # the harness table carries them, with the results saved per part (a rerun reuses them)
    table = accuracy.markdown(accuracy.summarise({"tiny": rows}, ["tiny"]), ["tiny"], budget, ())
    assert "| losa r16 1-shot V=2 |" in table and "| full 1-shot aug V=2 |" in table
    saved = json.loads((out / "results" / "tiny" / "views2-e1.json").read_text())
    assert set(saved) == {"losa r16 V=2", "mist V=2"}
    saved = json.loads((out / "results" / "tiny" / "views2-rrc0.5-1-e1.json").read_text())
    assert set(saved) == {"losa r16 V=2 rrc:0.5-1", "mist V=2 rrc:0.5-1"}
    # --tabulate reads the saved rows back and computes nothing: none where nothing is saved
    again = dict(counts=(0, 2), shots=(1,), few_views=(0, 2), mild=(2,))
    parts = {"views", "mild", "fewshot"}
    saved_rows = views_part(task, out, spec, budget, parts, accuracy.saved_only, **again)
    assert saved_rows == json.loads(json.dumps(rows))
    empty = tmp_path / "empty"
    assert views_part(task, empty, spec, budget, parts, accuracy.saved_only, **again) == {}
    assert not empty.exists()
    # the figures put what the rows vary on the x axis: shots per class, stored views
    aug, mild = accuracy.AUGMENT, accuracy.MILD_AUGMENT
    acc = lambda name: rows[name]["test_acc"]
    assert shot_series(rows) == {
        **{(m, False, None): {1: acc(f"{m} 1-shot")} for m in ("losa r16", "mist")},
        **{(m, True, aug): {1: acc(f"{m} 1-shot V=2")} for m in ("losa r16", "mist")},
        ("full", True, aug): {1: acc("full 1-shot aug V=2")},
    }
    assert view_series(rows) == {
        **{(m, True, aug): {0: acc(f"{m} V=0"), 2: acc(f"{m} V=2")} for m in ("losa r16", "mist")},
        **{(m, True, mild): {0: acc(f"{m} V=0"), 2: acc(f"{m} V=2 rrc:0.5-1")}
           for m in ("losa r16", "mist")},
        ("full", True, aug): {2: acc("full aug V=2")},
        ("full", True, mild): {2: acc("full aug V=2 rrc:0.5-1")},
    }  # fmt: skip
    doc = {"per_task": {"tiny": rows}, "tasks": ["tiny"], "classes": {"tiny": 2},
           "rows": accuracy.summarise({"tiny": rows}, ["tiny"])}  # fmt: skip
    made = accuracy.figures(doc, tmp_path, "accuracy-test")
    assert {c: p.name for c, p in made.items()} == {
        "accuracy vs stored views": "accuracy-test-views.png",
        "accuracy vs shots per class": "accuracy-test-shots.png",
    }  # no cost figure: the views and few-shot rows do not differ in cost
    assert all(p.stat().st_size > 0 for p in made.values())
