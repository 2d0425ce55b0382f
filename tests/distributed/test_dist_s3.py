"""Stores on object storage: S3 (moto's server on 127.0.0.1) and memory://, the writer
lease that keeps two runs apart, and resume after a killed run."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _dist_helpers import CFG, assert_same_store, cli_args, done_count, kill_when, start_run
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.distributed import extract_distributed
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError, open_store
from losa_cache.store.lease import LeaseRecord, StoreLease
from losa_cache.store.store import STORAGE_OPTIONS_ENV
from losa_cache.train import StoreReader, labelled_rows

runner = CliRunner()


def test_cluster_extract_to_s3_then_info_and_open_store(
    client: Any, s3: dict, reference_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = f"s3://{s3['bucket']}/dask.zarr", s3["options"]
    result = extract_distributed(
        ExtractConfig(store=url, **CFG), client=client, storage_options=options, progress=False
    )
    assert result.shards_written == 19
    assert_same_store(url, reference_store, options)
    out = runner.invoke(app, ["info", url, "--storage-options", json.dumps(options), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["complete"]
    # training and sweeps call open_store(url): the options come from the environment
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(options))
    assert open_store(url).complete
    assert runner.invoke(app, ["info", url]).exit_code == 0
    assert "storage_options" not in json.dumps(open_store(url).manifest.extract_config)
    # shuffled training batches read from S3 (through zarr) equal the local store's
    # (straight from its shard files)
    remote, local = open_store(url), open_store(reference_store)
    assert remote.features(remote.layers[0]).direct is None
    assert local.features(local.layers[0]).direct is not None
    batches = []
    for store in (remote, local):
        rows, labels = labelled_rows(store, "train", None)
        with StoreReader(
            store, rows, labels, store.layers, 7, seed=1, buffer_rows=12, workers=2
        ) as reader:
            stream = reader.batches()
            batches.append(list(itertools.islice(stream, 6)))
            stream.close()
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a.rows, b.rows) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(a.features[k], b.features[k]) for k in a.features)


def test_s3_run_killed_second_run_refused_then_resumed(
    client: Any, s3: dict, reference_store: str, tmp_path: Path
) -> None:
    url, options = f"s3://{s3['bucket']}/killed.zarr", s3["options"]
    env = {STORAGE_OPTIONS_ENV: json.dumps(options)}
    proc = start_run(url, "inprocess", 0.2, tmp_path / "run.log", env)
    try:
        assert kill_when_refused_first(proc, url, options)
    finally:
        if proc.poll() is None:
            proc.kill()
    lease = StoreLease(url, options)
    assert lease.read() is not None, "a killed run leaves its lease behind"
    before = done_count(url, options)
    assert 3 <= before < 19
    args = [*cli_args(url), f"--scheduler={client.scheduler.address}", "--json"]
    out = runner.invoke(app, [*args, "--storage-options", json.dumps(options)])
    assert out.exit_code == 0, out.output  # the dead holder's lease is taken over
    assert json.loads(out.stdout)["shards_written"] == 19 - before
    assert_same_store(url, reference_store, options)
    assert lease.read() is None, "a finished run removes its lease"


def kill_when_refused_first(proc: subprocess.Popen, url: str, options: dict) -> bool:
    """Once 3 shards are written, a second run must be refused; then SIGKILL the first."""

    def refused() -> bool:
        if done_count(url, options) < 3:
            return False
        with pytest.raises(StoreError, match="another extraction is writing"):
            extract(ExtractConfig(store=url, **CFG), progress=False, storage_options=options)
        return True

    return kill_when(proc, refused)


def test_memory_store_in_process(reference_store: str) -> None:
    url = "memory://losa-test/m.zarr"
    extract(ExtractConfig(store=url, **CFG), progress=False)
    assert_same_store(url, reference_store)
    assert StoreLease(url).read() is None


def test_file_url_store_uses_the_local_lock(reference_store: str, tmp_path: Path) -> None:
    from losa_cache.store.writer import store_lock

    url = f"file://{tmp_path}/f.zarr"
    with store_lock(str(tmp_path / "f.zarr")), pytest.raises(StoreError, match="another"):
        extract(ExtractConfig(store=url, **CFG), progress=False)
    extract(ExtractConfig(store=url, **CFG), progress=False)
    assert_same_store(url, reference_store)
    assert_same_store(str(tmp_path / "f.zarr"), reference_store)


def test_live_lease_refuses_a_second_writer() -> None:
    url = "memory://lease/a.zarr"
    with StoreLease(url), pytest.raises(StoreError, match=r"pid \d+ on .*expires in"):
        StoreLease(url).acquire()
    StoreLease(url).acquire().release()  # free again after release


@pytest.mark.parametrize("holder", ["expired", "dead_process_here"])
def test_stale_lease_is_taken_over(holder: str) -> None:
    url = f"memory://lease/{holder}.zarr"
    lease = StoreLease(url)
    me = lease.record
    if holder == "expired":
        stale = LeaseRecord("other", "elsewhere", 1, 0.0, 0.0, time.time() - 1)
    else:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        stale = LeaseRecord("other", me.host, gone.pid, time.time(), 0.0, time.time() + 600)
    lease.fs.pipe_file(lease.path, json.dumps(stale.__dict__).encode())
    with lease:
        assert lease.read().owner == me.owner


def test_lost_lease_stops_the_run() -> None:
    url = "memory://lease/lost.zarr"
    lease = StoreLease(url, ttl=0.3).acquire()
    try:
        thief = LeaseRecord("thief", "elsewhere", 1, 0.0, 0.0, time.time() + 600)
        lease.fs.pipe_file(lease.path, json.dumps(thief.__dict__).encode())
        time.sleep(0.5)
        with pytest.raises(StoreError, match="lost the writer lease"):
            lease.check()
    finally:
        lease.release()
    assert lease.read().owner == "thief", "never delete a lease someone else holds"
