"""The one top-level error mapper (cli/errors.py, on every command through cli/main.py):
disk full, read-only and forbidden paths and damaged JSON are one line naming the path and
the fix, with a non-zero exit; ``LOSA_CACHE_DEBUG=1`` keeps the traceback.

Before (issue 26, item 15): ``OSError [Errno 30]`` and ``[Errno 28]`` tracebacks from
train/sweep ``--out``, export and ``tasks add``; "Expecting value: line 1" naming no file.
Failures are injected at a real command's writes (``os.open``/``open`` under ``--out``), and
made for real where the machine allows: a read-only tmpfs and a full one (root only), a
``chmod``-ed folder (not as root: root writes anyway).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from losa_cache.cli.errors import DEBUG_ENV, describe
from losa_cache.cli.main import app

FIX = {
    errno.ENOSPC: "no space left on the disk (ENOSPC)",
    errno.EROFS: "read-only file system (EROFS): choose another",
    errno.EACCES: "permission denied (EACCES)",
}


def train(store: str, out: Path, **env: str) -> Result:
    args = ["train", "--store", store, "--out", str(out), "--steps", "2", "--batch-size", "16",
            "--device", "cpu", "--workers", "0", "--rank", "4", "--layers", "evenly:2"]  # fmt: skip
    return CliRunner().invoke(app, args, env=env or None)


def assert_one_line(result: Result, *parts: str) -> str:
    """A non-zero exit whose stderr ends in exactly one ``error:`` line (progress lines may
    come before it), holding every one of ``parts``; no traceback."""
    err = result.stderr.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert result.exit_code != 0 and errors == err[-1:], result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def fail_writes_under(monkeypatch: pytest.MonkeyPatch, root: Path, code: int,
                      named: bool = True) -> None:  # fmt: skip
    """Every open for writing of a path under ``root`` raises OSError ``code`` (with the
    path as ``filename`` unless ``named`` is False: then the mapper names --out)."""
    real_os_open, real_open = os.open, builtins.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def refuse(path: Any) -> None:
        if str(os.fspath(path)).startswith(str(root)):
            raise OSError(code, os.strerror(code), *([os.fspath(path)] if named else []))

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writing:
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_injected_write_failures_are_one_line(
    micro_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    out = tmp_path / "run"
    fail_writes_under(monkeypatch, tmp_path, code)
    line = assert_one_line(train(micro_store, out), FIX[code], str(out))
    if code == errno.ENOSPC:
        assert "finished work is kept" in line and "rerun the same command" in line


def test_a_failure_without_a_filename_names_the_commands_out(
    micro_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output writer names the file it could not write; an OSError that names none
    (raised below it) is placed at the command's --out."""
    out = tmp_path / "run"
    fail_writes_under(monkeypatch, tmp_path, errno.ENOSPC, named=False)
    assert_one_line(train(micro_store, out), f"{out}/", "(ENOSPC)")
    bare = OSError(errno.ENOSPC, "No space left on device")
    line = describe(bare, ["train", "--store", micro_store, "--out", str(out)])
    assert f"--out {out}: no space left on the disk (ENOSPC)" in line, line


def test_debug_keeps_the_traceback(
    micro_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes_under(monkeypatch, tmp_path, errno.EROFS)
    result = train(micro_store, tmp_path / "run", **{DEBUG_ENV: "1"})
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EROFS


# ----------------------------------------------------------------- real read-only / full disks


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount_tmpfs("size=1m,ro")`` -> a fresh tmpfs mount point (skips where the test may
    not mount: not root, or no mount namespace rights)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_mount_is_one_line(
    micro_store: str, mount_tmpfs: Callable[[str], Path]
) -> None:
    out = mount_tmpfs("size=1m,ro") / "run"
    assert_one_line(train(micro_store, out), FIX[errno.EROFS], str(out))


@pytest.mark.parametrize("room", [0, 8192])
def test_a_full_disk_is_one_line_and_the_rerun_finishes(
    micro_store: str, mount_tmpfs: Callable[[str], Path], room: int
) -> None:
    """Full at the first write (the lock), or after a few (metrics, a checkpoint: torch's
    writer raises RuntimeError, not OSError): the same line, and the rerun after freeing
    space finishes."""
    disk = mount_tmpfs("size=512k")
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:  # fill it, then leave ``room`` bytes free
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        f.truncate(max(0, f.tell() - room))
    out = disk / "run"
    assert_one_line(train(micro_store, out), FIX[errno.ENOSPC], "finished work is kept", str(out))
    filler.unlink()  # the fix the line names: free space, rerun the same command
    result = train(micro_store, out)
    assert result.exit_code == 0, result.output
    assert (out / "adapter.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder anyway")
def test_a_folder_without_write_permission_is_one_line(micro_store: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_one_line(train(micro_store, locked / "run"), FIX[errno.EACCES], str(locked))
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------- damaged JSON


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def test_damaged_json_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "metrics.json"
    bad.write_text('{"step": ')
    for read in (_load, lambda p: json.load(p.open())):
        with pytest.raises(json.JSONDecodeError) as caught:
            read(bad)
        assert describe(caught.value).startswith(f"{bad} is not valid JSON (Expecting value")


def test_damaged_json_in_a_command_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "zarr.json"
    bad.write_text("{")
    monkeypatch.setattr("losa_cache.store.info.store_info", lambda *_, **__: _load(bad))
    result = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert_one_line(result, f"{bad} is not valid JSON", "restore or delete it")


def test_a_damaged_zarr_json_is_named(micro_store: str, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(micro_store, store)
    (store / "zarr.json").write_text('{"zarr_format": 3, ')
    result = CliRunner().invoke(app, ["info", str(store)])
    assert_one_line(result, f"{store}/zarr.json is not valid JSON", "restore or delete it")
