"""Fixtures of the distributed tests: one LocalCluster, a reference store, an S3 server.

Everything stays on this machine: Dask on 127.0.0.1, S3 is moto's server on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _dist_helpers, also for worker processes (they inherit sys.path)

from _dist_helpers import CFG  # noqa: E402


class _Cluster:
    """One LocalCluster (two single-threaded worker processes) shared by the tests that need
    no fresh cluster: started on first use, closed once the next test is outside this folder
    (idle workers and nannies cost CPU for the rest of the session), started again if a
    later test here asks for it."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self.client: Any = None

    def get(self) -> Any:
        if self.client is None:
            from distributed import Client, LocalCluster

            stack = contextlib.ExitStack()
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=2,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    host="127.0.0.1",
                    silence_logs=logging.ERROR,
                )
            )
            self.client, self._stack = stack.enter_context(Client(cluster)), stack
        return self.client

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self.client = self._stack, None, None
            stack.close()


_CLUSTER = _Cluster()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if nextitem is None or HERE not in Path(nextitem.path).parents:
        _CLUSTER.close()


@pytest.fixture
def dask_client() -> Any:
    """The shared cluster's client (see ``_Cluster``)."""
    return _CLUSTER.get()


@pytest.fixture
def client(dask_client: Any) -> Any:
    dask_client.wait_for_workers(2, timeout=60)
    return dask_client


@pytest.fixture(scope="session")
def reference_store(make_store) -> str:
    """``CFG`` extracted in-process, uninterrupted: what every other run must equal."""
    return make_store("ref", **CFG)


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, Any]]:
    """A real S3 API (moto server) on 127.0.0.1 with one bucket; yields storage options."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="losa")
    options = {
        "key": "test",
        "secret": "test",
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "us-east-1"},
    }
    yield {"options": options, "bucket": "losa"}
    server.stop()
