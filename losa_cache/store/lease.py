"""A writer lease for stores on object storage, where there is no flock.

One small JSON object beside the store (``.NAME.lock``) says who is extracting into it
and until when. It is created with an exclusive put (S3 ``If-None-Match: *``), renewed by
a heartbeat thread, and deleted on exit. A lease is *stale*, and taken over, once it has
expired (the holder stopped renewing: killed, or cut off) or when its holder ran on this
host and that process is gone, so rerunning after a crash needs no waiting.

Cooperation semantics where the lease cannot help (clock skew beyond the TTL, or two
take-overs of one stale lease racing): shard writes are deterministic and whole-object,
and a done marker follows its shard's data, so two writers write identical bytes. The
loser notices on its next heartbeat and stops with a clear error.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import psutil

from losa_cache.store.store import StoreError, storage_options_for

DEFAULT_TTL_S = 60.0


@dataclass
class LeaseRecord:
    """The content of the lease object."""

    owner: str
    host: str
    pid: int
    pid_started: float
    since: float
    expires: float

    def describe(self) -> str:
        left = self.expires - time.time()
        return f"pid {self.pid} on {self.host}, lease expires in {max(0.0, left):.0f} s"

    def is_stale(self, now: float) -> bool:
        if now > self.expires:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid, self.pid_started)


def _alive(pid: int, started: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def lease_path(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """Beside the store (zarr warns about foreign keys inside one); in it at a bucket root."""
    root = root.rstrip("/")
    parent = fs._parent(root)
    name = root.rsplit("/", 1)[-1]
    return f"{parent}/.{name}.lock" if parent else f"{root}/.losa-cache.lock"


class StoreLease:
    """Hold the writer lease of ``url`` while extracting; ``check()`` raises once it is lost."""

    def __init__(
        self, url: str, storage_options: dict | None = None, ttl: float = DEFAULT_TTL_S
    ) -> None:
        options = storage_options_for(url, storage_options) or {}
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.url = url
        self.path = lease_path(self.fs, root)
        self.ttl = ttl
        me = psutil.Process()
        self.record = LeaseRecord(
            uuid.uuid4().hex, socket.gethostname(), me.pid, me.create_time(), time.time(), 0.0
        )
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release -------------------------------------------------------------
    def acquire(self) -> StoreLease:
        holder = self.read()
        if holder is not None:
            if not holder.is_stale(time.time()):
                raise self._refusal(holder)
            self.fs.rm(self.path)  # take over a dead holder's lease
        self.record.expires = time.time() + self.ttl
        try:
            with self.fs.open(self.path, "xb") as f:  # exclusive: one of two racers wins
                f.write(self._payload())
        except FileExistsError:
            raise self._refusal(self.read()) from None
        self._thread = threading.Thread(target=self._heartbeat, name="losa-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.read()
        if holder is not None and holder.owner == self.record.owner:
            self.fs.rm(self.path)

    def __enter__(self) -> StoreLease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- while held ----------------------------------------------------------------------
    def check(self) -> None:
        """Raise if another writer took the lease (called between shards)."""
        if self.lost:
            raise StoreError(self.lost)

    def read(self) -> LeaseRecord | None:
        try:
            return LeaseRecord(**json.loads(self.fs.cat_file(self.path)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # half-written or foreign: treat as expired
            return LeaseRecord("?", "?", -1, 0.0, 0.0, 0.0)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            holder = self.read()
            if holder is None or holder.owner != self.record.owner:
                who = holder.describe() if holder else "nobody"
                self.lost = f"lost the writer lease of {self.url} (now held by {who}); stopping"
                return
            self.record.expires = time.time() + self.ttl
            self.fs.pipe_file(self.path, self._payload())

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.record)).encode()

    def _refusal(self, holder: LeaseRecord | None) -> StoreError:
        who = holder.describe() if holder else "another process"
        return StoreError(
            f"another extraction is writing {self.url} ({who}); wait for it to finish, or "
            f"stop it, then rerun to resume (a dead holder's lease is taken over once it expires)"
        )
