"""Shared pieces of the distributed tests: the run config, store comparison, worker hooks.

Worker hooks are Dask worker plugins, so they reach worker processes (and workers that
a nanny restarts) without any test-only code in the library.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from losa_cache.store import open_store
from losa_cache.store import schema as S

#: 300 rows (100 per split) in 19 shards of 16 rows: enough shards to kill runs mid-way.
CFG: dict[str, Any] = dict(
    model="vit_micro",
    random_init=True,
    workers=0,
    dataset="demo",
    limit=100,
    shard_rows=16,
    chunk_rows=8,
    batch_size=8,
)


RUN = str(Path(__file__).resolve().parent / "_dist_run.py")


def start_run(
    store: str, mode: str, slow: float, log: Path, env: dict | None = None
) -> subprocess.Popen:
    """A run in its own session, so one killpg ends its client and every worker."""
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, RUN, store, mode, str(slow)],
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> bool:
    """SIGKILL the run's whole process group once ``ready()``; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
    proc.wait()
    return alive


def cli_args(store: str) -> list[str]:
    """``losa-cache extract`` arguments equal to ``CFG``."""
    return [
        "extract",
        "--model=vit_micro",
        "--random-init",
        "--workers=0",
        "--dataset=demo",
        "--limit=100",
        "--shard-rows=16",
        "--chunk-rows=8",
        "--batch-size=8",
        f"--store={store}",
    ]


def arrays(path: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Every array of a store (features, index, progress, splits, tasks)."""
    store = open_store(path, storage_options)
    names = [S.feature_name(layer) for layer in store.layers]
    names += [S.STATUS, S.ERROR, S.SOURCE, S.DONE, S.CHECKSUMS]
    names += [S.task_name(t) for t in store.tasks] + [S.split_name(s) for s in store.splits]
    return {n: store.group[n][:] for n in names}


def done_count(path: str, storage_options: dict | None = None) -> int:
    """Shards marked done so far; 0 while the store is still being created."""
    from losa_cache.store.store import open_group

    try:
        return int(open_group(path, "r", storage_options)[S.DONE][:].sum())
    except Exception:  # not created yet, or creation in progress
        return 0


def assert_same_store(a: str, b: str, a_options: dict | None = None) -> None:
    x, y = arrays(a, a_options), arrays(b)
    assert x.keys() == y.keys()
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    assert open_store(a, a_options).complete


class SlowWrites(WorkerPlugin):
    """Each shard write sleeps afterwards: gives a test time to kill things mid-run."""

    name = "test-slow-writes"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self, worker: Any) -> None:
        from losa_cache.store.writer import ShardWriter

        self.real = ShardWriter.write
        real, seconds = self.real, self.seconds

        def write(writer: Any, *args: Any, **kwargs: Any) -> None:
            real(writer, *args, **kwargs)
            time.sleep(seconds)

        ShardWriter.write = write

    def teardown(self, worker: Any) -> None:
        from losa_cache.store.writer import ShardWriter

        ShardWriter.write = self.real


class CountBackboneLoads(WorkerPlugin):
    """Counts ``create_backbone`` calls in each worker (``worker.losa_backbone_loads``)."""

    name = "test-count-loads"

    def setup(self, worker: Any) -> None:
        import losa_cache.extract as E

        self.real = E.create_backbone
        worker.losa_backbone_loads = 0
        real = self.real

        def counted(*args: Any, **kwargs: Any) -> Any:
            worker.losa_backbone_loads += 1
            return real(*args, **kwargs)

        E.create_backbone = counted

    def teardown(self, worker: Any) -> None:
        import losa_cache.extract as E

        E.create_backbone = self.real
