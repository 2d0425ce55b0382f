"""Extraction on a Dask LocalCluster: equal to in-process, backbone loaded once per worker,
a worker killed mid-task, refusals, and the CLI flags."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _dist_helpers import (
    CFG,
    CountBackboneLoads,
    SlowWrites,
    assert_same_store,
    cli_args,
    done_count,
)
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.distributed import ClusterSpec, extract_distributed, parse_cluster
from losa_cache.extract import ExtractConfig
from losa_cache.store import StoreError
from losa_cache.store.writer import store_lock

runner = CliRunner()


def test_cluster_store_equals_in_process_and_loads_backbone_once(
    client: Any, reference_store: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "dask.zarr")
    client.register_plugin(CountBackboneLoads())
    try:
        result = extract_distributed(
            ExtractConfig(store=path, **CFG), client=client, progress=False
        )
        loads = client.run(lambda dask_worker: dask_worker.losa_backbone_loads)
    finally:
        client.unregister_worker_plugin(CountBackboneLoads.name)
    assert result.written == 300 and result.shards_written == result.shards_total == 19
    assert not result.resumed and result.images_per_s > 0
    assert sorted(loads.values()) == [1, 1], "each worker loads the backbone once, not per task"
    assert_same_store(path, reference_store)


def test_groups_of_shards_per_task_give_the_same_store(
    client: Any, reference_store: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "dask.zarr")
    extract_distributed(
        ExtractConfig(store=path, **CFG), client=client, progress=False, shards_per_task=4
    )
    assert_same_store(path, reference_store)
    again = extract_distributed(ExtractConfig(store=path, **CFG), client=client, progress=False)
    assert again.resumed and again.written == 0 and again.shards_written == 0


def test_worker_killed_mid_task_run_completes(
    client: Any, reference_store: str, tmp_path: Path
) -> None:
    """SIGKILL a worker process while it computes; Dask reschedules its task."""
    path = str(tmp_path / "killed-worker.zarr")
    client.register_plugin(SlowWrites(0.15))
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            done = done_count(path)
            busy = [w for w, keys in client.processing().items() if keys]
            if done >= 3 and busy:
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)  # a worker of the cluster this session started
                killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    try:
        result = extract_distributed(
            ExtractConfig(store=path, **CFG), client=client, progress=False, shards_per_task=3
        )
    finally:
        killer.join()
        client.unregister_worker_plugin(SlowWrites.name)
    assert killed, "the worker must be killed mid-run"
    assert result.shards_written == 19 and result.written == 300
    assert_same_store(path, reference_store)


def test_second_run_on_a_locked_store_is_refused(client: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "s.zarr")
    with store_lock(path), pytest.raises(StoreError, match="another extraction"):
        extract_distributed(ExtractConfig(store=path, **CFG), client=client, progress=False)
    assert not Path(path).exists(), "a refused run writes nothing"


def test_memory_store_is_refused_for_a_cluster(client: Any) -> None:
    with pytest.raises(ValueError, match="memory://"):
        extract_distributed(ExtractConfig(store="memory://x.zarr", **CFG), client=client)


def test_cli_with_scheduler_address(client: Any, reference_store: str, tmp_path: Path) -> None:
    path = str(tmp_path / "cli.zarr")
    address = client.scheduler.address
    result = runner.invoke(app, [*cli_args(path), f"--scheduler={address}", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["written"] == 300 and out["shards_written"] == 19
    assert_same_store(path, reference_store)


@pytest.mark.parametrize(
    ("cluster", "scheduler", "spec"),
    [
        ("local:3", None, ClusterSpec("local", workers=3)),
        ("local", None, ClusterSpec("local")),
        ("cuda", None, ClusterSpec("cuda")),
        (None, "tcp://127.0.0.1:8786", ClusterSpec("scheduler", address="tcp://127.0.0.1:8786")),
        (None, None, None),
    ],
)
def test_parse_cluster(cluster: str | None, scheduler: str | None, spec: Any) -> None:
    assert parse_cluster(cluster, scheduler) == spec


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster=local:0"], "local:N"),
        (["--cluster=yarn"], "local:N"),
        (["--cluster=local:2", "--scheduler=tcp://127.0.0.1:1"], "not both"),
        (["--scheduler=127.0.0.1:8786"], "tcp://"),
        (["--cluster=cuda"], "pip install dask-cuda"),
        (["--scheduler=tcp://127.0.0.1:9"], "cannot reach a Dask scheduler"),
    ],
)
def test_cli_cluster_errors_are_one_clear_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    import dask

    if "--cluster=cuda" in args and importlib.util.find_spec("dask_cuda") is not None:
        pytest.skip("dask-cuda is installed here")
    path = tmp_path / "unused.zarr"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = runner.invoke(app, [*cli_args(str(path)), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not path.exists()
