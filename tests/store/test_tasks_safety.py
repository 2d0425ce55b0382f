"""Labelling changes never lose a labelling: safe names, serialised and atomic writes.

The concurrency and crash cases run the real CLI in subprocesses: six `tasks add` started
together, and a `tasks add --overwrite` SIGKILLed at an injected point.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import add_task, open_store
from losa_cache.store.tasks import TASK_NAME_RULE

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def store(micro_store: str, tmp_path: Path) -> str:
    """A private copy of the session's micro store (these tests change it)."""
    path = tmp_path / "s.zarr"
    shutil.copytree(micro_store, path)
    return str(path)


def labels_file(store: str, path: Path, shift: int) -> Path:
    """Every row labelled ``(row + shift) % 3``."""
    sources = open_store(store).sources
    path.write_text("".join(f"{s} {(i + shift) % 3}\n" for i, s in enumerate(sources)))
    return path


def expected(store: str, shift: int) -> np.ndarray:
    return (np.arange(open_store(store).num_images) + shift) % 3


def task_arrays(store: str) -> list[str]:
    return sorted(k for k, _ in open_store(store).group["tasks"].members())


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", ".", "a\\b", "/abs", "a b", "x:y", "é", "-x", "__x", "x" * 65]
)
def test_unsafe_task_names_are_refused_and_nothing_changes(
    store: str, tmp_path: Path, name: str
) -> None:
    before = open_store(store)
    default, old = before.default_task, before.labels().copy()
    f = labels_file(store, tmp_path / "l.txt", 1)
    out = runner.invoke(app, ["tasks", "add", store, "--name", name, "--labels", str(f)])
    assert out.exit_code != 0
    assert TASK_NAME_RULE in " ".join(out.output.split()), out.output
    after = open_store(store)
    assert after.tasks == [default] and np.array_equal(after.labels(default), old)
    assert task_arrays(store) == [default]


def test_safe_names_are_accepted(store: str, tmp_path: Path) -> None:
    f = labels_file(store, tmp_path / "l.txt", 1)
    for name in ["coarse", "Fine-2", "v1.0", "a_b", "9"]:
        out = runner.invoke(app, ["tasks", "add", store, "--name", name, "--labels", str(f)])
        assert out.exit_code == 0, out.output
        assert np.array_equal(open_store(store).labels(name), expected(store, 1))


def test_a_name_differing_only_in_case_is_refused(store: str, tmp_path: Path) -> None:
    f = labels_file(store, tmp_path / "l.txt", 1)
    runner.invoke(app, ["tasks", "add", store, "--name", "animal", "--labels", str(f)])
    out = runner.invoke(app, ["tasks", "add", store, "--name", "Animal", "--labels", str(f)])
    assert out.exit_code != 0 and "only in case" in out.output
    assert "Animal" not in open_store(store).tasks


def test_the_rule_is_documented_in_help_and_docs() -> None:
    out = runner.invoke(app, ["tasks", "add", "--help"])
    assert TASK_NAME_RULE in " ".join(re.sub(r"[│╭╮╰╯─]", " ", out.output).split())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "store.md").read_text()
    assert TASK_NAME_RULE in " ".join(doc.split())


# ------------------------------------------------------------------------------ overwrite


def test_overwrite_replaces_and_leaves_no_old_array(store: str) -> None:
    s = open_store(store)
    default, n = s.default_task, s.num_images
    add_task(store, "t", np.zeros(n, np.int32), ["a"])
    for k in range(3):  # back and forth between tasks/t and an array written aside
        add_task(store, "t", np.full(n, k % 2, np.int32), ["a", "b"], overwrite=True)
        assert np.array_equal(open_store(store).labels("t"), np.full(n, k % 2))
        assert len(task_arrays(store)) == 2, task_arrays(store)
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        add_task(store, "t", np.zeros(n, np.int32), ["a"])
    assert open_store(store).tasks == [default, "t"]


def test_overwrite_on_an_object_store_under_its_lease(micro_store: str) -> None:
    """The same switch on an fsspec store (memory://), serialised by the lease object."""
    import fsspec

    from losa_cache.store.lease import StoreLease

    url = "memory://tasks-safety/s.zarr"
    fsspec.filesystem("memory").put(micro_store, "/tasks-safety/s.zarr", recursive=True)
    n = open_store(url).num_images
    add_task(url, "t", np.zeros(n, np.int32), ["a"])
    add_task(url, "t", np.ones(n, np.int32), ["a", "b"], overwrite=True)
    s = open_store(url)
    assert np.array_equal(s.labels("t"), np.ones(n)) and s.classes("t") == ["a", "b"]
    assert len(list(s.group["tasks"].array_keys())) == 2
    assert StoreLease(url).read() is None, "the lease is given back"


def test_a_legacy_nested_task_survives_new_tasks(store: str) -> None:
    """A store written before the name rule may hold ``tasks/a/b``; adding ``a`` keeps it."""
    from losa_cache.store import schema as S
    from losa_cache.store.store import open_group
    from losa_cache.store.tasks import write_task

    n = open_store(store).num_images
    group = open_group(store, mode="r+")
    write_task(group, "a/b", np.ones(n, np.int32), ["x", "y"], "", array="tasks/a/b")
    manifest = open_store(store).manifest
    manifest.tasks.append("a/b")
    group.attrs[S.ROOT_ATTR] = manifest.to_dict()
    add_task(store, "a", np.zeros(n, np.int32), ["x"])
    add_task(store, "a", np.zeros(n, np.int32), ["z"], overwrite=True)
    s = open_store(store)
    assert np.array_equal(s.labels("a/b"), np.ones(n)) and s.classes("a") == ["z"]


KILL_AT = r"""
import os, signal, sys
import zarr
from zarr.core.attributes import Attributes

point = sys.argv[1]
real_labels, real_attrs = zarr.Array.__setitem__, Attributes.__setitem__


def labels(self, key, value):  # writing the new labelling's values
    os.kill(os.getpid(), signal.SIGKILL)


def attrs(self, key, value):  # just after the manifest (root attributes) is written
    real_attrs(self, key, value)
    if key == "losa_cache":
        os.kill(os.getpid(), signal.SIGKILL)


if point == "labels":
    zarr.Array.__setitem__ = labels
else:
    Attributes.__setitem__ = attrs
from losa_cache.cli.main import app

app(sys.argv[2:])
"""


@pytest.mark.parametrize("point, survivor", [("labels", 1), ("switch", 2)])
def test_sigkill_during_overwrite_keeps_one_whole_labelling(
    store: str, tmp_path: Path, point: str, survivor: int
) -> None:
    old = labels_file(store, tmp_path / "old.txt", 1)
    new = labels_file(store, tmp_path / "new.txt", 2)
    args = ["tasks", "add", store, "--name", "t", "--labels"]
    assert runner.invoke(app, [*args, str(old)]).exit_code == 0
    cmd = [sys.executable, "-c", KILL_AT, point, *args, str(new), "--overwrite"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed at the injected point
    s = open_store(store)
    assert s.tasks == [s.default_task, "t"]
    assert np.array_equal(s.labels("t"), expected(store, survivor))
    assert s.classes("t") == ["0", "1", "2"]
    # the next change removes whatever the killed one left behind
    assert runner.invoke(app, [*args, str(old), "--overwrite"]).exit_code == 0
    assert np.array_equal(open_store(store).labels("t"), expected(store, 1))
    assert len(task_arrays(store)) == 2, task_arrays(store)


# ------------------------------------------------------------------------------ concurrency


def test_concurrent_adds_from_threads_all_land(store: str) -> None:
    """Each thread opens the lock file itself, so flock keeps them apart as it does
    processes (the subprocess test below is the real thing, and slower)."""
    from concurrent.futures import ThreadPoolExecutor

    n = open_store(store).num_images
    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(add_task, store, f"t{k}", (np.arange(n) + k) % 3, list("abc"))
                for k in range(6)]  # fmt: skip
        for j in jobs:
            j.result()
    s = open_store(store)
    assert sorted(s.tasks) == sorted([s.default_task, *(f"t{k}" for k in range(6))])
    for k in range(6):
        assert np.array_equal(s.labels(f"t{k}"), expected(store, k)), k


AT_GO = r"""
import sys, time
from pathlib import Path
from losa_cache.cli.main import app

Path(sys.argv[1]).touch()  # imported: ready
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
app(sys.argv[3:])
"""


@pytest.mark.slow
def test_six_concurrent_tasks_add_all_land(store: str, tmp_path: Path) -> None:
    go, procs = tmp_path / "go", []
    for k in range(6):
        f = labels_file(store, tmp_path / f"l{k}.txt", k)
        cmd = [sys.executable, "-c", AT_GO, str(tmp_path / f"ready{k}"), str(go),
               "tasks", "add", store, "--name", f"t{k}", "--labels", str(f)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{k}").exists() for k in range(6)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()  # all six start writing at once
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
    s = open_store(store)
    assert sorted(s.tasks) == sorted([s.default_task, *(f"t{k}" for k in range(6))])
    for k in range(6):
        assert np.array_equal(s.labels(f"t{k}"), expected(store, k)), k
