"""Decoding workers die with their parent: SIGKILL of `extract --workers 2` leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # exited meanwhile
        return ""


def _wait_for_workers(main: psutil.Process, timeout: float) -> list[psutil.Process]:
    """Descendants once the forkserver has forked the two decoding workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = main.children(recursive=True)
        servers = [p for p in procs if "forkserver" in _cmdline(p)]
        if servers and len(_alive(procs)) >= 4:  # + the resource tracker
            return procs
        time.sleep(0.1)
    raise AssertionError(f"no decoding workers after {timeout} s: {main.children(True)}")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="forkserver workers are Linux only")
def test_sigkill_of_extract_leaves_no_worker_or_forkserver(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "losa_cache.cli.main", "extract", "--model", "vit_micro",
           "--random-init", "--dataset", "demo", "--store", str(tmp_path / "s.zarr"),
           "--workers", "2", "--batch-size", "1", "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs: list[psutil.Process] = []
    try:
        procs = _wait_for_workers(psutil.Process(proc.pid), timeout=120)
        time.sleep(0.5)  # workers busy decoding, not just started
        assert proc.poll() is None, "extraction ended before it could be killed"
        procs = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while _alive(procs) and time.monotonic() - killed < 15:
            time.sleep(0.1)
        left = [(p.pid, _cmdline(p)[:80]) for p in _alive(procs)]
        assert not left, f"still running {time.monotonic() - killed:.1f} s after SIGKILL: {left}"
    finally:
        for p in _alive(procs):  # only what this test started
            p.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
