"""The one guarded writer (losa_cache/outdir.py) and the file commands that write outside a
run folder: export/import, ``tasks add``, the store's lock file (issue 26).

Full and read-only disks are real small tmpfs mounts where this process may mount them
(root), else skipped with the reason; the same cases are also injected at the write call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import losa_cache.outdir as O
from losa_cache.cli.main import app
from losa_cache.outdir import (
    MARKER,
    OutdirError,
    OutputWriteError,
    atomic_write_text,
    claim_outdir,
    read_json,
    remove_tree,
)

runner = CliRunner()


def cli(*args: str, code: int) -> str:
    got = runner.invoke(app, list(args))
    assert got.exit_code == code, got.output
    assert "Traceback" not in got.output
    return " ".join(got.output.split())


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``where`` (skips the test where this process cannot mount one)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root (a full/read-only disk for real)")
    got = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if got.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


# ------------------------------------------------------------------------------ the writer


def test_a_kill_before_the_rename_keeps_the_old_complete_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"old": true}\n')

    def killed(*_a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(O.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"new": true}\n')
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_symlink_is_never_written_or_deleted_through(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "peft").mkdir(parents=True)
    (target / "peft" / "w.bin").write_bytes(b"w")
    (tmp_path / "a.json").write_text("user\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").symlink_to(tmp_path / "a.json")
    (out / "best").symlink_to(target)
    with pytest.raises(OutdirError, match="is a symlink"):
        atomic_write_text(out / "metrics.json", "x")
    with pytest.raises(OutdirError, match="symlink"):
        remove_tree(out / "best")
    assert (tmp_path / "a.json").read_text() == "user\n" and (target / "peft" / "w.bin").exists()


def test_claim_refuses_the_users_files_and_accepts_its_own(tmp_path: Path) -> None:
    users = tmp_path / "users"
    (users / "my_analysis").mkdir(parents=True)
    (users / "NOTES.txt").write_text("n\n")
    with pytest.raises(OutdirError, match=r"did not write \(NOTES\.txt, my_analysis\)"):
        claim_outdir(users, "train")
    assert not (users / MARKER).exists()
    ours = claim_outdir(tmp_path / "new", "train")
    (ours / "metrics.json").write_text("{}\n")
    (ours / ".checkpoint.pt.tmp-12345").write_bytes(b"half")  # a killed write's leftover
    assert claim_outdir(ours, "train") == ours
    assert sorted(os.listdir(ours)) == [MARKER, "metrics.json"]


def test_a_damaged_record_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text('{"runs": [')
    with pytest.raises(OutdirError, match=f"{path} is damaged or incomplete.*; do this"):
        read_json(path, "do this")


def test_write_errors_name_the_file_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputWriteError) as err:
        O.atomic_write(tmp_path / "metrics.json", full)
    assert str(err.value).startswith(f"cannot write {tmp_path / 'metrics.json'}: no space")
    assert "--resume" in str(err.value) and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ import


def test_import_overwrite_never_deletes_the_users_files(micro_store: str, tmp_path: Path) -> None:
    h5 = tmp_path / "s.h5"
    cli("export", micro_store, str(h5), code=0)
    target = tmp_path / "T.zarr"
    shutil.copytree(micro_store, target)
    (target / "NOTES.txt").write_text("mine\n")
    (target / "my_analysis").mkdir()
    (target / "my_analysis" / "r.csv").write_text("a,b\n")
    before = tree(target)
    out = cli("import", str(h5), str(target), "--overwrite", code=2)
    assert "NOTES.txt" in out and "my_analysis" in out and "move them out" in out
    assert tree(target) == before
    (target / "NOTES.txt").unlink()
    shutil.rmtree(target / "my_analysis")
    (target / "features" / "mine.txt").write_text("inside the store\n")  # nested too
    before = tree(target)
    out = cli("import", str(h5), str(target), "--overwrite", code=2)
    assert "features/mine.txt" in out and tree(target) == before
    (target / "features" / "mine.txt").unlink()
    # the help's promise ("Replace an existing losa-cache store (never other files)") holds
    assert "created" in cli("import", str(h5), str(target), "--overwrite", code=0)


# ------------------------------------------------------------------------------ export


class _FillsUp:
    """A file that takes ``room`` bytes and then fails as a full disk does."""

    def __init__(self, path: object, mode: str, room: int) -> None:
        self.file, self.room = open(path, mode), room  # noqa: SIM115

    def write(self, data: object) -> int:
        n = memoryview(data).nbytes
        if self.file.tell() + n > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.file, name)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(
    micro_store: str, tmp_path: Path, monkeypatch, compression: str | None
) -> None:
    from losa_cache.store import StoreError, hdf5

    monkeypatch.setattr(hdf5, "open", lambda p, m: _FillsUp(p, m, 200_000), raising=False)
    with pytest.raises(StoreError, match=r"cannot write .*e\.h5: no space left on the disk") as err:
        hdf5.export_hdf5(micro_store, tmp_path / "e.h5", progress=False, compression=compression)
    assert "partial file was removed" in str(err.value)
    assert os.listdir(tmp_path) == []


def test_export_onto_a_real_full_disk(micro_store: str, tmp_path: Path) -> None:
    """In a child process: HDF5 used to segfault here (rc 139)."""
    with tmpfs(tmp_path / "full", "256k") as disk:
        for flags in ([], ["--compression", "gzip"]):
            got = subprocess.run(
                [sys.executable, "-m", "losa_cache.cli.main", "export", micro_store,
                 str(disk / "e.h5"), *flags],
                capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            assert got.returncode == 2, got.stderr
            lines = [x for x in got.stderr.splitlines() if x.startswith("error:")]
            assert len(lines) == 1 and "Traceback" not in got.stderr, got.stderr
            assert str(disk) in lines[0] and "free space" in lines[0]
            assert os.listdir(disk) == []


# ------------------------------------------------------------------------------ read-only


def test_read_only_targets_are_one_line(micro_store: str, tmp_path: Path) -> None:
    from losa_cache.store import open_store

    sources = open_store(micro_store).sources[:4]
    with tmpfs(tmp_path / "ro", "8m") as disk:
        shutil.copytree(micro_store, disk / "s.zarr")
        (disk / "labels.txt").write_text("".join(f"{s} {i % 2}\n" for i, s in enumerate(sources)))
        (disk / "out").mkdir()
        read_only(disk)
        said = {
            "export": cli("export", micro_store, str(disk / "e.h5"), code=2),
            "train": cli("train", "--store", micro_store, "--out", str(disk / "out"),
                         "--steps", "2", "--device", "cpu", code=2),
            "sweep": cli("sweep", "--store", micro_store, "--out", str(disk / "out"),
                         "--method", "linear", "--steps", "2", "--device", "cpu", code=2),
            "tasks add": cli("tasks", "add", str(disk / "s.zarr"), "--name", "t2", "--labels",
                             str(disk / "labels.txt"), code=2),
        }  # fmt: skip
        for command, out in said.items():
            assert "read-only" in out and str(disk) in out, (command, out)


# ------------------------------------------------------------------------------ litter


def test_no_lock_file_is_left_beside_a_store(micro_store: str, tmp_path: Path) -> None:
    from losa_cache.store import add_task, open_store

    store = tmp_path / "s.zarr"
    shutil.copytree(micro_store, store)
    s = open_store(str(store))
    add_task(str(store), "again", s.labels(), s.classes())
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]
    assert "again" in open_store(str(store)).tasks


def test_train_onto_a_real_full_disk_is_one_line(micro_store: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "1m") as disk:
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave a few pages: the lock, the marker, the log
            f.write(b"\0" * (shutil.disk_usage(disk).free - 3 * 4096))
        out = disk / "run"
        args = ["train", "--store", micro_store, "--out", str(out), "--method", "linear",
                "--steps", "4", "--device", "cpu"]  # fmt: skip
        said = cli(*args, code=2)  # torch.save's own error hides the OSError
        assert f"error: cannot write {out / 'checkpoint.pt'}: no space left" in said, said
        assert "free space" in said and not [p for p in os.listdir(out) if ".tmp-" in p]
        filler.unlink()
        cli(*args, code=0)  # nothing was checkpointed: the same command starts again
        assert (out / "adapter.json").is_file()
