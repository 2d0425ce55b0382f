"""The store's writer lock: labelling changes wait for each other, never for an extraction."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from losa_cache.store import StoreError
from losa_cache.store.lease import EXTRACTION, LABELLING, store_lock


def where(kind: str, tmp_path: Path) -> str:
    return str(tmp_path / "s.zarr") if kind == "local" else f"memory://lock/{tmp_path.name}.zarr"


def hold(path: str, purpose: str, seconds: float) -> threading.Thread:
    """Hold the lock in a thread for ``seconds``; returns once it is held."""
    held = threading.Event()

    def run() -> None:
        with store_lock(path, purpose=purpose):
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    assert held.wait(30)
    return thread


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_labelling_change_waits_for_another(kind: str, tmp_path: Path) -> None:
    path = where(kind, tmp_path)
    thread = hold(path, LABELLING, 0.5)
    start = time.monotonic()
    with store_lock(path, purpose=LABELLING):
        waited = time.monotonic() - start
    thread.join()
    assert waited > 0.3, "the second change must wait for the first"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_an_extraction_is_not_waited_for(kind: str, tmp_path: Path) -> None:
    path = where(kind, tmp_path)
    thread = hold(path, EXTRACTION, 1.5)
    start = time.monotonic()
    lock = store_lock(path, purpose=LABELLING)
    with pytest.raises(StoreError, match=r"another extraction is writing .*pid \d+ on "):
        lock.__enter__()
    assert time.monotonic() - start < 1.0, "refused at once, not after the extraction"
    thread.join()
