"""Run a batch generator on a background thread, a few batches ahead.

Zarr reads and decompression release the GIL, so one producer thread (plus the
reader's I/O pool) keeps the training loop fed without worker processes, which zarr's
event-loop thread makes unsafe to fork anyway.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")
_DONE = object()


class Prefetcher(Generic[T]):
    """Iterate ``make()`` on a daemon thread; exceptions re-raise in the consumer."""

    def __init__(self, make: Callable[[], Iterator[T]], depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True,
                                        name="losa-cache-prefetch")
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator[T]]) -> None:
        try:
            for item in make():
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, who raises it
            self._put(e)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer (it exits at its next put) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
