"""Augmented views in the store (extract --views V --augment SPEC) and in training.

One fp32 vit_micro store of 12 demo images a split with 2 views of every train image;
the checks are equivalences: view v of row r is a pure function of (seed, r, v) (worker
counts, resumed shards), training from the store equals live training with the same
augmentation, evaluation reads clean rows only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from losa_cache.augment import (
    AugmentSpec,
    ViewPlan,
    augment,
    draw_views,
    parse_augment,
    view_generator,
)
from losa_cache.backbone import create_backbone
from losa_cache.data import get_dataset
from losa_cache.extract import ExtractConfig, extract, select_rows
from losa_cache.store import StoreError, open_store
from losa_cache.store import schema as S
from losa_cache.store.store import open_group
from losa_cache.train import TrainConfig, train
from losa_cache.train.reader import StoreReader
from tests.train._train_helpers import losses

SPEC = "rrc:0.08-1,flip"
N = 12  # images per split
BASE = dict(model="vit_micro", random_init=True, dataset="demo", dtype="float32", limit=N,
            chunk_rows=8, shard_rows=16, batch_size=8, views=2, augment=SPEC)  # fmt: skip


def _extract(path: Path, **kw: Any) -> Any:
    return extract(ExtractConfig(store=str(path), **{**BASE, "workers": 0, **kw}), progress=False)


@pytest.fixture(scope="module")
def views_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("views") / "v.zarr"
    _extract(path)
    return path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = open_store(str(path))
    names = [S.feature_name(b) for b in store.layers]
    names += [S.SOURCE, S.STATUS, S.VIEWS, f"{S.TASKS}/{store.default_task}"]
    return {n: store.group[n][:] for n in names}


def test_views_are_rows_after_the_clean_ones(views_store: Path) -> None:
    store = open_store(str(views_store))
    assert store.num_images == 3 * N + 2 * N  # train/val/test clean + 2 views of train
    table = store.group[S.VIEWS][:]
    train = store.split_rows("train")
    assert table.shape == (3 * N, 3) and np.array_equal(table[:, 0], np.arange(3 * N))
    assert (table[train, 1:] >= 3 * N).all() and (np.delete(table, train, 0)[:, 1:] == -1).all()
    for split in store.manifest.splits:  # splits hold clean rows only
        assert store.split_rows(split).max() < 3 * N
    r, v = int(train[3]), 2
    assert store.sources[table[r, v]] == f"{store.sources[r]}#view=2"
    labels = store.labels()
    assert np.array_equal(labels[table[train, 1]], labels[train])
    assert store.manifest.identity["views"] == {"count": 2, "augment": SPEC, "seed": 0,
                                                "train_rows": N}  # fmt: skip


def test_view_is_the_seeded_augmentation_of_its_image(views_store: Path) -> None:
    store = open_store(str(views_store))
    b = create_backbone("vit_micro", random_init=True)
    dataset = get_dataset("demo")
    row = int(store.split_rows("train")[5])
    image = dataset.load(select_rows(dataset, N, None)[0][row])
    last = b.depth - 1
    views = []
    for v in (1, 2):
        x = augment(image, parse_augment(SPEC), b.preprocess, view_generator(0, row, v))
        want = b.intermediates(x[None], [last])[0][0]
        got = store.features(last).read_torch(np.array([store.group[S.VIEWS][row, v]]))[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        views.append(got)
    clean = store.features(last).read_torch(np.array([row]))[0]
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[0], clean)


def test_views_identical_across_workers_and_a_resume(views_store: Path, tmp_path: Path) -> None:
    two = tmp_path / "w2.zarr"
    _extract(two, workers=2)
    a, b = _arrays(views_store), _arrays(two)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # a run killed before shards 1 and 3 were done: their markers unset, rows garbled
    layout = open_store(str(two)).layout
    group = open_group(str(two), mode="r+")
    for shard in (1, 3):
        lo, hi = layout.shard_range(shard)
        group[S.DONE][shard] = 0
        for name in a:
            if name.startswith(S.FEATURES):
                group[name][lo:hi] = 0.0
    resumed = _extract(two, workers=1)
    assert resumed.resumed and resumed.shards_written == 2
    b = _arrays(two)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


KILL_SCRIPT = """
import sys, time
from losa_cache.store.writer import ShardWriter
from losa_cache.extract import ExtractConfig, extract
slow = ShardWriter.write
def write(self, *a, **k):
    slow(self, *a, **k)
    time.sleep(0.3)  # time for the test to kill us between shards
ShardWriter.write = write
extract(ExtractConfig(store=sys.argv[1], workers=0, **BASE), progress=False)
"""


def test_views_identical_after_a_killed_extraction(views_store: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    killed = tmp_path / "killed.zarr"
    script = f"BASE = {BASE!r}\n" + KILL_SCRIPT
    proc = subprocess.Popen([sys.executable, "-c", script, str(killed)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    done_dir = killed / "progress" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_store(str(killed))
    assert 2 <= int(partial.done_shards().sum()) < len(partial.done_shards())
    assert _extract(killed, workers=2).resumed  # another worker count, too
    a, b = _arrays(views_store), _arrays(killed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_other_views_or_augmentation_refused(views_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "c.zarr"
    shutil.copytree(views_store, copy)
    for kw in ({"views": 3}, {"augment": "flip"}, {"view_seed": 1}):
        with pytest.raises(StoreError, match="views"):
            _extract(copy, **kw)
    with pytest.raises(ValueError, match="needs --augment"):
        ExtractConfig(store="x", **{**BASE, "augment": None})
    with pytest.raises(ValueError, match="bad --augment op 'blur'"):
        ExtractConfig(store="x", **{**BASE, "augment": "rrc,blur"})
    assert parse_augment("flip,rrc:0.5-1") == AugmentSpec((0.5, 1.0), True)


def test_extend_adds_taps_to_the_views_too(views_store: Path, tmp_path: Path) -> None:
    """``--extend`` of a store with views (the same command, new ``--taps``) writes the
    new tap for the view rows as well: bit-identical to a store extracted with the tap from
    the start. Without the views' options it is refused, naming the views, and the store is
    left as it was (extend requires the store's settings, as for --layers or --dtype)."""
    ext = tmp_path / "ext.zarr"
    shutil.copytree(views_store, ext)
    before = _arrays(ext)
    for kw in ({"views": 0, "augment": None}, {"augment": "rrc:0.5-1"}):
        with pytest.raises(StoreError, match=r"(?s)--extend only adds taps.*views"):
            _extract(ext, taps="embed", extend=True, **kw)
    assert open_store(str(ext)).taps == ["blocks"]
    after = _arrays(ext)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    _extract(ext, taps="embed", extend=True)
    once = tmp_path / "once.zarr"
    _extract(once, taps="blocks,embed")
    a, b = open_store(str(ext)), open_store(str(once))
    assert a.taps == b.taps == ["blocks", "embed"]
    assert a.manifest.identity == b.manifest.identity
    views = a.group[S.VIEWS][:][:, 1:]
    assert (views >= 3 * N).sum() == 2 * N  # the view rows are there to compare
    np.testing.assert_array_equal(a.tap_features("embed")[:], b.tap_features("embed")[:])
    got, want = _arrays(ext), _arrays(once)  # blocks, sources, status, view table, labels
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_draw_is_a_pure_function_covering_every_view() -> None:
    rows = np.arange(2000)
    a = draw_views(7, 3, rows, 4)
    assert np.array_equal(a, draw_views(7, 3, rows, 4))  # same inputs, same draw
    assert np.array_equal(a[500:600], draw_views(7, 3, rows[500:600], 4))  # per row
    assert set(a.tolist()) == {0, 1, 2, 3, 4} and abs(np.mean(a == 0) - 0.2) < 0.05
    assert (a != draw_views(7, 4, rows, 4)).mean() > 0.5  # a new draw each epoch
    assert (a != draw_views(8, 3, rows, 4)).mean() > 0.5  # and per seed


def test_plan_row_layout() -> None:
    plan = ViewPlan.of({"train": [0, 1, 2], "val": [3]}, 2, SPEC, 0)
    assert plan.total == 4 + 6 and plan.table()[1].tolist() == [1, 6, 7]
    assert plan.table()[3].tolist() == [3, -1, -1]
    assert plan.sources(["a", "b", "c", "d"])[4:6] == ["a#view=1", "a#view=2"]


# ------------------------------------------------------------------------------ training

TRAIN = {"method": "losa", "rank": 2, "layers": "all", "steps": 12, "batch_size": 4,
         "optimizer": "adamw", "lr": 1e-2, "workers": 0, "cache": "none", "amp": "fp32",
         "device": "cpu", "eval_every": 6, "log_every": 1, "shuffle_buffer": 8}  # fmt: skip
LIVE = {"live": True, "model": "vit_micro", "random_init": True, "dataset": "demo", "limit": N}


def test_store_with_views_equals_live_with_the_same_augmentation(
    views_store: Path, tmp_path: Path
) -> None:
    cached = TrainConfig(store=str(views_store), out=str(tmp_path / "c"), **TRAIN)
    live = TrainConfig(out=str(tmp_path / "l"), views="2", augment=SPEC, **LIVE, **TRAIN)
    mc, ml = train(cached, progress=False), train(live, progress=False)
    torch.testing.assert_close(torch.tensor(losses(live.out)), torch.tensor(losses(cached.out)),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert ml["test_acc"] == mc["test_acc"]
    clean = TrainConfig(store=str(views_store), out=str(tmp_path / "k"), views="clean", **TRAIN)
    train(clean, progress=False)
    assert losses(clean.out) != losses(cached.out)  # the views were really drawn
    plain = TrainConfig(out=str(tmp_path / "p"), **LIVE, **TRAIN)  # live, no augmentation
    train(plain, progress=False)
    torch.testing.assert_close(torch.tensor(losses(plain.out)), torch.tensor(losses(clean.out)),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_eval_never_reads_a_view(
    views_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[bool, np.ndarray]] = []
    submit = StoreReader._submit

    def spy(self: StoreReader, rows: np.ndarray, *a: Any) -> Any:
        reads.append((self.order.views is not None, np.asarray(rows).copy()))
        return submit(self, rows, *a)

    monkeypatch.setattr(StoreReader, "_submit", spy)
    train(TrainConfig(store=str(views_store), out=str(tmp_path / "e"), **TRAIN), progress=False)
    clean_rows = 3 * N
    training = np.concatenate([r for drawn, r in reads if drawn])
    evaluation = [r for drawn, r in reads if not drawn]
    assert (training >= clean_rows).any()  # training read view rows
    assert evaluation and all((r < clean_rows).all() for r in evaluation)


def test_live_augment_options_checked() -> None:
    with pytest.raises(ValueError, match="needs --views N"):
        TrainConfig(out="x", augment=SPEC, **LIVE)
    with pytest.raises(ValueError, match="--augment is for --live"):
        TrainConfig(store="s", augment=SPEC)
    with pytest.raises(ValueError, match="choose all or clean"):
        TrainConfig(store="s", views="3")


def test_sweep_member_with_views_equals_the_run_alone(views_store: Path, tmp_path: Path) -> None:
    import dataclasses
    import json

    from losa_cache.sweep import RunSpec, SweepConfig, run_sweep

    cfg = SweepConfig(store=str(views_store), out=str(tmp_path / "s"), method=["losa", "linear"],
                      rank=[2], layers=["all"], lr=[0.05], steps=7, batch_size=4, workers=0,
                      device="cpu", speed_batches=0, amp="fp32", cache="none")  # fmt: skip
    run_sweep(cfg, progress=False)
    doc = json.loads((Path(cfg.out) / "sweep.json").read_text())
    for r in doc["runs"]:
        spec = RunSpec.from_dict(r)
        member = spec.train.out
        alone = dataclasses.replace(spec.train, out=str(tmp_path / "alone" / spec.id))
        assert alone.views == "all"  # the store's views drawn, as in the sweep
        train(alone, progress=False)
        assert losses(alone.out) == losses(member)


# ------------------------------------------------------------------------------ other readers


def test_subset_keeps_the_views_of_the_rows_it_keeps(views_store: Path, tmp_path: Path) -> None:
    from losa_cache.store.subset import subset_store

    src = open_store(str(views_store))
    dst = tmp_path / "sub.zarr"
    subset_store(str(views_store), str(dst), layers="3", rows=["train", "test"])
    sub = open_store(str(dst))
    table, old = sub.group[S.VIEWS][:], src.group[S.VIEWS][:]
    kept = np.concatenate([src.split_rows("train"), src.split_rows("test")])  # sorted, clean
    assert sub.num_images == 2 * N + 2 * N and table.shape == (2 * N, 3)
    for new_row, row in enumerate(kept):
        for v in range(3):
            if old[row, v] < 0:
                assert table[new_row, v] == -1
                continue
            assert sub.sources[table[new_row, v]] == src.sources[old[row, v]]
            np.testing.assert_array_equal(sub.features(3)[table[new_row, v]],
                                          src.features(3)[old[row, v]])  # fmt: skip
    cfg = TrainConfig(store=str(dst), out=str(tmp_path / "t"), **{**TRAIN, "layers": "store"})
    assert train(cfg, progress=False)["complete"]  # trains from the subset's views


def test_verify_and_hdf5_round_trip_carry_the_views(views_store: Path, tmp_path: Path) -> None:
    from losa_cache.store.hdf5 import export_hdf5, import_hdf5
    from losa_cache.store.writer import verify_store

    report = verify_store(str(views_store))
    assert report["bad"] == [] and report["shards_checked"] == report["shards_total"]
    damaged = tmp_path / "d.zarr"
    shutil.copytree(views_store, damaged)
    row = int(open_store(str(damaged)).group[S.VIEWS][0, 2])  # a view row, last shard
    open_group(str(damaged), mode="r+")[S.feature_name(1)][row] = 0.0
    bad = verify_store(str(damaged))["bad"]
    assert [b["shard"] for b in bad] == [row // 16]  # verify checks view rows too
    h5 = tmp_path / "v.h5"
    export_hdf5(str(views_store), h5, progress=False)
    back = tmp_path / "back.zarr"
    import_hdf5(h5, str(back), progress=False)
    a, b = _arrays(views_store), _arrays(back)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_plan_prices_the_views(views_store: Path) -> None:
    from losa_cache.plan import plan

    base = plan("vit_micro", "demo", "all", "float32", measure=False)
    priced = plan("vit_micro", "demo", "all", "float32", measure=False, views=2)
    train = base["splits"]["train"]
    assert priced["views"]["rows"] == 2 * train
    assert priced["images"] == base["images"] + 2 * train  # (V + 1) x the train split
    assert priced["bytes_total"] == base["bytes_total"] + 2 * train * base["bytes_per_image"]
    store = open_store(str(views_store))  # and it is what extraction writes, per row
    assert store.num_images == 3 * N + 2 * N


def test_cli_extract_and_train_views(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    store = tmp_path / "cli.zarr"
    args = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo", "--store",
            str(store), "--limit", "4", "--workers", "0", "--dtype", "fp32", "--views", "1",
            "--augment", "flip", "--view-seed", "3"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    s = open_store(str(store))
    assert s.num_images == 12 + 4 and s.manifest.extract_config["view_seed"] == 3
    out = CliRunner().invoke(app, ["train", "--store", str(store), "--out", str(tmp_path / "r"),
                                   "--steps", "2", "--batch-size", "2", "--views", "clean",
                                   "--workers", "0", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(app, [*args[:-2], "--augment", "rrc"])  # another augmentation
    assert out.exit_code != 0 and "views" in out.output
    out = CliRunner().invoke(app, ["plan", "--model", "vit_micro", "--dataset", "demo",
                                   "--views", "4", "--no-measure", "--json"])  # fmt: skip
    doc = json.loads(out.stdout)
    assert doc["views"]["rows"] == 4 * doc["splits"]["train"]


def test_other_zarr_clients_read_the_view_table(views_store: Path) -> None:
    import json

    import dask.array as da
    import tensorstore as ts
    import zarr

    path = str(views_store)
    want = open_store(path).group[S.VIEWS][:]
    meta = json.loads((views_store / S.VIEWS / "zarr.json").read_text())
    assert meta["dimension_names"] == ["image", "view"]
    assert meta["codecs"][-1]["name"] == "crc32c"  # checked like every array
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/{S.VIEWS}"}}
    for got in (ts.open(spec, read=True).result().read().result(),
                da.from_zarr(path, component=S.VIEWS).compute(),
                zarr.open_array(f"{path}/{S.VIEWS}", mode="r")[:]):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(got), want)
