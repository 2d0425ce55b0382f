"""Output folders: collision-free names from labels, and one run per folder at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losa_cache import outdir
from losa_cache.cli.main import app
from losa_cache.outdir import (
    LOCK_FILE,
    OutdirInUse,
    OutdirLock,
    folder_name,
    folder_names,
    is_safe_segment,
)
from losa_cache.sweep import SweepConfig, expand_runs

runner = CliRunner()

# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize("label", ["label", "Fine-2", "v1.0", "a_b", "9"])
def test_safe_labels_keep_their_name(label: str) -> None:
    assert folder_name(label) == label


@pytest.mark.parametrize("label", ["", ".", "..", "a/b", "/abs", "a\\b", "x:y", "é", "_x"])
def test_unsafe_labels_become_one_safe_segment(label: str) -> None:
    name = folder_name(label)
    assert is_safe_segment(name) and name not in (".", "..") and "/" not in name
    assert folder_name(label) == name, "the same label always gets the same folder"


def test_labels_that_slug_alike_get_distinct_folders() -> None:
    labels = ["a/b", "a_b", "a:b", "a b", "a\\b"]
    names = folder_names(labels)
    assert len(set(names.values())) == len(labels), names
    assert names["a_b"] == "a_b"


def test_folders_that_would_collide_are_refused() -> None:
    with pytest.raises(ValueError, match="would share the output folder"):
        folder_names(["Animal", "animal"])  # one folder on case-insensitive disks
    with pytest.raises(ValueError, match="would share"):
        folder_names(["a/b", folder_name("a/b")])


def test_sweep_tasks_that_slug_alike_write_separate_folders() -> None:
    cfg = SweepConfig(store="s.zarr", out="o", method=["linear"], task=["a/b", "a_b"])
    runs = expand_runs(cfg, depth=4, store_layers=[0, 1, 2, 3], default_task="t")
    outs = {r.task: Path(r.train.out).parent for r in runs}
    assert outs["a/b"] != outs["a_b"], outs
    assert all(p.parent == Path("o/runs") for p in outs.values())


def test_sweep_tasks_differing_only_in_case_are_refused() -> None:
    cfg = SweepConfig(store="s.zarr", out="o", method=["linear"], task=["Dog", "dog"])
    with pytest.raises(ValueError, match="would share the output folder"):
        expand_runs(cfg, depth=4, store_layers=[0, 1, 2, 3], default_task="t")


# ------------------------------------------------------------------------------ locks


def test_second_holder_is_refused_naming_folder_and_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with OutdirLock(out, "train"):
        with pytest.raises(OutdirInUse) as e:
            OutdirLock(out, "sweep").acquire()
        msg = str(e.value)
        assert str(out) in msg and f"pid {os.getpid()}" in msg and "train" in msg
        assert "--out" in msg
    with OutdirLock(out, "sweep"):  # free again once released
        pass
    assert not (out / LOCK_FILE).exists()


def test_a_folder_the_lock_created_is_removed_if_left_empty(tmp_path: Path) -> None:
    fresh, used, kept = tmp_path / "fresh", tmp_path / "used", tmp_path / "kept"
    kept.mkdir()
    for folder in (fresh, used, kept):
        with OutdirLock(folder, "train"):
            if folder is used:
                (folder / "metrics.jsonl").write_text("{}\n")
    assert not fresh.exists() and (used / "metrics.jsonl").is_file() and kept.is_dir()


HOLD = r"""
import importlib.util, sys, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("outdir", sys.argv[3])  # no torch: fast
outdir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(outdir)
outdir.OutdirLock(sys.argv[1], "train").acquire()
Path(sys.argv[2]).touch()
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds ``tmp_path/run``'s lock; yields (folder, process)."""
    out, ready = tmp_path / "run", tmp_path / "ready"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    module = outdir.__file__
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(ready), module], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_sigkilled_holder_does_not_block(holder) -> None:
    out, proc = holder
    with pytest.raises(OutdirInUse, match=f"pid {proc.pid} on "):
        OutdirLock(out, "train").acquire()
    proc.kill()
    proc.wait()
    with OutdirLock(out, "train"):  # the kernel dropped the dead holder's lock
        pass


def test_train_into_a_folder_in_use_is_refused(holder, micro_store: str) -> None:
    out, proc = holder
    args = ["train", "--store", micro_store, "--out", str(out), "--steps", "2",
            "--batch-size", "8", "--device", "cpu", "--rank", "4"]  # fmt: skip
    got = runner.invoke(app, args)
    assert got.exit_code != 0
    text = " ".join(got.output.split())
    assert f"{out} is in use by train pid {proc.pid}" in text, got.output
    assert os.listdir(out) == [LOCK_FILE], "the refused run wrote nothing"
    proc.kill()
    proc.wait()
    assert runner.invoke(app, args).exit_code == 0  # sequential use: as before
    again = runner.invoke(app, args)  # and reuse is refused by today's rule, not the lock
    assert again.exit_code != 0 and "already holds a run" in again.output, again.output


def test_sweep_into_a_folder_in_use_is_refused(holder, micro_store: str) -> None:
    out, proc = holder
    got = runner.invoke(app, ["sweep", "--store", micro_store, "--out", str(out),
                              "--method", "linear", "--steps", "2", "--device", "cpu"])  # fmt: skip
    assert got.exit_code != 0
    assert f"{out} is in use by train pid {proc.pid}" in " ".join(got.output.split())
    assert os.listdir(out) == [LOCK_FILE]
