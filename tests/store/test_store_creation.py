"""Creating a store (extract, subset, import) killed at any file operation never wedges:
the same command rerun redoes the creation and ends with the same store as an
uninterrupted run, whatever taps it has and wherever the kill landed (including zarr's
own write-aside file of the root's very first ``zarr.json``)."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
import zarr.storage._local as local

from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import open_store
from losa_cache.store import writer as W
from losa_cache.store.hdf5 import export_hdf5, import_hdf5
from losa_cache.store.subset import subset_store
from losa_cache.store.target import inspect_target

TAPPED = {"model": "vit_micro", "random_init": True, "dataset": "demo", "limit": 3,
          "workers": 0, "chunk_rows": 2, "shard_rows": 4, "batch_size": 4, "layers": "3",
          "taps": "blocks,embed,sum:1", "dtype": "int8"}  # fmt: skip


class Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, nothing after it runs."""


@functools.cache
def _real_put() -> Callable:
    return local._put


def counting(monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None) -> list[int]:
    """Count zarr's local file writes; at write ``kill_at`` leave its write-aside file
    half-written (as a kill before the rename does) and die."""
    real, count = _real_put(), [0]

    def put(path: Path, value, exclusive: bool = False) -> int:
        count[0] += 1
        if count[0] == kill_at:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = value.to_bytes()
            path.with_suffix(f".{uuid.uuid4().hex}.partial").write_bytes(data[: len(data) // 2])
            raise Killed
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", put)
    return count


def nodes(path: Path) -> Iterator[tuple[str, object]]:
    """(name, what it holds) of every node: metadata but the creation time and the
    store's own random id, and every array's values."""
    group = zarr.open_group(str(path), mode="r")
    root = group.attrs.asdict()["losa_cache"]
    root["extract_config"] = {**root["extract_config"], "store": "-"}
    yield "", {k: v for k, v in root.items() if k not in ("created", "store_id")}
    for name, node in sorted(group.members(max_depth=None)):
        if isinstance(node, zarr.Array):
            attrs = {k: v for k, v in node.attrs.asdict().items() if k != "store"}
            yield name, (node.shape, str(node.dtype), attrs, node[...].tobytes())


def assert_same(path: Path, reference: Path) -> None:
    got, want = dict(nodes(path)), dict(nodes(reference))
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def creation_writes(run: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> int:
    """How many file writes the creation of ``run`` makes (up to its manifest)."""
    count, seen = counting(monkeypatch), []
    real = W.create_store

    def create(*a, **k):  # the creation is done once it returns
        group = real(*a, **k)
        seen.append(count[0])
        return group

    with monkeypatch.context() as m:
        for module in (sys.modules["losa_cache.extract"], sys.modules["losa_cache.store.subset"]):
            m.setattr(module, "create_store", create)
        run()
    monkeypatch.undo()
    return seen[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    extract(ExtractConfig(store=str(path), **TAPPED), progress=False)
    return path


@pytest.fixture(scope="module")
def creation(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple, dict]:
    """The arguments extract passes to create_store for TAPPED (a fresh store)."""
    calls: list[tuple[tuple, dict]] = []
    mp = pytest.MonkeyPatch()
    real = W.create_store

    def record(*a, **k):
        calls.append(copy.deepcopy((a, k)))
        return real(*a, **k)

    mp.setattr(sys.modules["losa_cache.extract"], "create_store", record)
    try:
        path = tmp_path_factory.mktemp("made") / "s.zarr"
        extract(ExtractConfig(store=str(path), **TAPPED), progress=False)
    finally:
        mp.undo()
    return calls[0]


@pytest.mark.slow
def test_creation_killed_at_every_write_is_redone(
    creation: tuple[tuple, dict], reference: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Every write of a creation with taps embed and sum and int8 scales killed, then a
    second kill while it is redone, then the redo: the same store, and extract fills it."""
    path = tmp_path / "s.zarr"
    args, kwargs = creation

    def create() -> None:
        a, k = copy.deepcopy((args, kwargs))
        W.create_store(str(path), *a[1:], **k)

    count = counting(monkeypatch)
    create()
    total = count[0]
    monkeypatch.undo()
    made = tmp_path / "made.zarr"
    shutil.move(path, made)
    assert total > 30, "taps embed and sum and the int8 scales are all created"
    for n in range(1, total + 1):
        if path.exists():
            shutil.rmtree(path)
        counting(monkeypatch, kill_at=n)
        with pytest.raises(Killed):
            create()
        assert inspect_target(str(path)) == "partial", n
        monkeypatch.undo()
        if n % 4 == 0:  # killed again while redoing it (deleting, or its first writes)
            counting(monkeypatch, kill_at=1 + n % 3)
            with pytest.raises(Killed):
                create()
            monkeypatch.undo()
        if n in (1, total // 2, total):  # the command itself redoes it and fills it
            result = extract(ExtractConfig(store=str(path), **TAPPED), progress=False)
            assert not result.resumed and result.shards_written == result.shards_total, n
            assert_same(path, reference)
        else:
            create()
            assert open_store(str(path), allow_incomplete=True).manifest.state == "ready"
            if n % 8 == 0:
                assert_same(path, made)


KILL_AT_FIRST_WRITE = r"""
import os, signal, sys, uuid
import zarr.storage._local as local
real = local._put
def put(path, value, exclusive=False):
    path.with_suffix(f".{uuid.uuid4().hex}.partial").write_bytes(b'{"zarr_for')
    os.kill(os.getpid(), signal.SIGKILL)
local._put = put
from losa_cache.cli.main import app
app(sys.argv[1:])
"""


def test_sigkill_at_the_roots_first_write_is_redone(reference: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    args = ["extract", "--store", str(path), "--model", "vit_micro", "--random-init",
            "--dataset", "demo", "--limit", "3", "--workers", "0", "--chunk-rows", "2",
            "--shard-rows", "4", "--batch-size", "4", "--layers", "3",
            "--taps", "blocks,embed,sum:1", "--dtype", "int8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_WRITE, *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name.endswith(".partial") for p in path.iterdir()] == [True]
    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    out = CliRunner().invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert not json.loads(out.stdout)["resumed"]
    assert sorted(p.name for p in path.iterdir() if p.name.endswith(".partial")) == []
    assert_same(path, reference)


def test_subset_killed_during_creation_is_redone(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dst = tmp_path / "sub.zarr"
    run = functools.partial(subset_store, str(reference), str(dst), taps="embed,sum:1",
                            rows=["train"])  # fmt: skip
    total = creation_writes(run, monkeypatch)
    want = tmp_path / "want.zarr"
    subset_store(str(reference), str(want), taps="embed,sum:1", rows=["train"])
    for n in range(1, total + 1, 4):
        if dst.exists():
            shutil.rmtree(dst)
        counting(monkeypatch, kill_at=n)
        with pytest.raises(Killed):
            run()
        monkeypatch.undo()
        run()
        assert open_store(str(dst)).complete
        assert_same(dst, want)


@pytest.mark.slow
def test_import_killed_at_any_write_is_redone(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h5 = Path(export_hdf5(str(reference), tmp_path / "s.h5", progress=False)["out"])
    dst = tmp_path / "imp.zarr"
    count = counting(monkeypatch)
    import_hdf5(h5, str(dst), progress=False)
    total = count[0]
    monkeypatch.undo()
    for n in [*range(1, 6), *range(6, total + 1, 7), total]:
        shutil.rmtree(dst)
        counting(monkeypatch, kill_at=n)
        with pytest.raises(Killed):
            import_hdf5(h5, str(dst), progress=False)
        monkeypatch.undo()
        import_hdf5(h5, str(dst), progress=False)
        assert_same(dst, reference)
    # a finished store replaced by --overwrite, killed midway, is redone by the rerun
    counting(monkeypatch, kill_at=total // 2)
    with pytest.raises(Killed):
        import_hdf5(h5, str(dst), progress=False, overwrite=True)
    monkeypatch.undo()
    import_hdf5(h5, str(dst), progress=False, overwrite=True)
    assert_same(dst, reference)
    assert np.array_equal(open_store(str(dst)).sources, open_store(str(reference)).sources)


def test_no_store_is_made_inside_another_store(reference: Path, tmp_path: Path) -> None:
    outer = tmp_path / "outer.zarr"
    shutil.copytree(reference, outer)
    before = sorted(p.relative_to(outer) for p in outer.rglob("*"))
    from losa_cache.store import StoreError

    for inner in (outer / "mine.zarr", outer / "features" / "x.zarr"):
        with pytest.raises(StoreError, match=f"inside the losa-cache store {outer}"):
            subset_store(str(reference), str(inner), taps="embed")
        with pytest.raises(StoreError, match="inside the losa-cache store"):
            extract(ExtractConfig(store=str(inner), **TAPPED), progress=False)
    assert sorted(p.relative_to(outer) for p in outer.rglob("*")) == before


def test_a_full_disk_during_creation_is_one_line_and_the_rerun_finishes(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    path = tmp_path / "s.zarr"
    real, count = _real_put(), [0]

    def full(p: Path, value, exclusive: bool = False) -> int:
        count[0] += 1
        if count[0] == 20:
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real(p, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", full)
    args = ["extract", "--store", str(path), "--model", "vit_micro", "--random-init",
            "--dataset", "demo", "--limit", "3", "--workers", "0", "--chunk-rows", "2",
            "--shard-rows", "4", "--batch-size", "4", "--layers", "3",
            "--taps", "blocks,embed,sum:1", "--dtype", "int8"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    said = "no space left on the disk (ENOSPC): free space (or choose another store path), then"
    assert out.exit_code == 2 and said in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1 and inspect_target(str(path)) == "partial"
    monkeypatch.undo()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert_same(path, reference)
