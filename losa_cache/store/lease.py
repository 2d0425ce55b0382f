"""The store's writer lock: one writer of a store at a time, on local disks and object stores.

Everything that changes a store takes it through :func:`store_lock`: an extraction or a
repair (held for hours) and a labelling change (``tasks add``, held for a moment).
Locally it is an advisory ``flock`` on ``.NAME.lock`` beside the store, released by the
kernel when the holder exits or is killed (the file is removed when it ends). On object
storage, where there is no flock, it is a *lease*: one small JSON object beside the
store saying who holds it and until when. It is created with an exclusive put
(S3 ``If-None-Match: *``), renewed by a heartbeat thread, and deleted on exit. A lease is
*stale*, and taken over, once it has expired (the holder stopped renewing: killed, or
cut off) or when its holder ran on this host and that process is gone, so rerunning
after a crash needs no waiting.

A second writer is refused with the holder's pid, host and purpose, except that a short
holder (a labelling change) is waited for: six concurrent ``tasks add`` all land, one
after another, while an extraction's lock is refused at once rather than waited on.

Cooperation semantics where the lease cannot help (clock skew beyond the TTL, or two
take-overs of one stale lease racing): shard writes are deterministic and whole-object,
and a done marker follows its shard's data, so two writers write identical bytes. The
loser notices on its next heartbeat and stops with a clear error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import psutil

from losa_cache.files import release_flock, try_flock
from losa_cache.store.errors import StoreError
from losa_cache.store.fs import is_remote, storage_options_for

DEFAULT_TTL_S = 60.0
EXTRACTION = "extraction"
LABELLING = "tasks add"
#: purposes held for moments, not hours: a second writer waits for these
SHORT_PURPOSES = (LABELLING,)
#: how long a writer waits for a short holder before it is refused
SHORT_WAIT_S = 120.0
_POLL_S = 0.05


@contextlib.contextmanager
def store_lock(
    path: str, storage_options: dict | None = None, purpose: str = EXTRACTION
) -> Iterator[Any]:
    """Hold the store's writer lock for ``purpose``; the handle's ``check()`` raises once
    the lock was lost (leases only: a local flock is held until the process dies)."""
    lock: StoreLease | _LocalLock
    if is_remote(path):
        lock = StoreLease(path, storage_options, purpose=purpose)
    else:
        lock = _LocalLock(path, purpose)
    _wait_for(lock.try_acquire, path)
    try:
        yield lock
    finally:
        lock.release()


def _wait_for(try_acquire: Callable[[], dict[str, Any] | None], path: str) -> None:
    """Call ``try_acquire()`` (None on success, else the holder) until it succeeds; wait
    only while the holder is short-lived, up to :data:`SHORT_WAIT_S`."""
    deadline = time.monotonic() + SHORT_WAIT_S
    while True:
        holder = try_acquire()
        if holder is None:
            return
        if holder.get("purpose") not in SHORT_PURPOSES or time.monotonic() > deadline:
            raise _refusal(path, holder)
        time.sleep(_POLL_S)


def _refusal(path: str, holder: dict[str, Any]) -> StoreError:
    purpose = holder.get("purpose") or "writer"
    who = holder.get("describe") or "unknown process"
    return StoreError(
        f"another {purpose} is writing {path} ({who}); wait for it to finish, or stop it, "
        "then rerun (a killed holder's lock is released or taken over automatically)"
    )


def _holder_record(purpose: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


class _LocalLock:
    """A flock on ``.NAME.lock`` beside a local store (not inside it: zarr warns about
    foreign files in a hierarchy). The file is removed on release (no litter beside the
    store); a waiter that locked the removed inode notices and opens the new file."""

    def __init__(self, path: str, purpose: str) -> None:
        root = Path(path.removeprefix("file://")).resolve()
        root.parent.mkdir(parents=True, exist_ok=True)
        self.file = root.parent / f".{root.name}.lock"
        self.purpose = purpose
        self.fd: int | None = None

    def try_acquire(self) -> dict[str, Any] | None:
        fd, holder = try_flock(self.file, _holder_record(self.purpose))
        if fd is None:
            return _parse_holder(holder)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            release_flock(self.fd, self.file)
            self.fd = None

    def check(self) -> None:
        return None


def _parse_holder(raw: bytes) -> dict[str, Any]:
    """The holder a lock file names. Empty, or naming a dead process of this host (killed:
    the new holder has not written its name yet), it reads as a short holder: wait."""
    text = raw.decode(errors="replace").strip()
    starting = {"purpose": SHORT_PURPOSES[0], "describe": "a process starting up"}
    if not text:
        return starting
    try:
        rec = json.loads(text)
        if rec["host"] == socket.gethostname() and not psutil.pid_exists(rec["pid"]):
            return starting
        return {
            "purpose": rec["purpose"],
            "describe": f"pid {rec['pid']} on {rec['host']} since {rec['since']}",
        }
    except (ValueError, KeyError, TypeError):  # an older losa-cache wrote free text
        return {"purpose": EXTRACTION, "describe": text[:200]}


@dataclass
class LeaseRecord:
    """The content of the lease object."""

    owner: str
    host: str
    pid: int
    pid_started: float
    since: float
    expires: float
    purpose: str = EXTRACTION

    def describe(self) -> str:
        left = self.expires - time.time()
        return f"pid {self.pid} on {self.host}, lease expires in {max(0.0, left):.0f} s"

    def is_stale(self, now: float) -> bool:
        if now > self.expires:
            return True
        return self.host == socket.gethostname() and not _alive(self.pid, self.pid_started)

    def holder(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "describe": self.describe()}


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
    """Hold the writer lease of ``url``; ``check()`` raises once it is lost."""

    def __init__(
        self,
        url: str,
        storage_options: dict | None = None,
        ttl: float = DEFAULT_TTL_S,
        purpose: str = EXTRACTION,
    ) -> None:
        options = storage_options_for(url, storage_options) or {}
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.url = url
        self.path = lease_path(self.fs, root)
        self.ttl = ttl
        me = psutil.Process()
        self.record = LeaseRecord(
            uuid.uuid4().hex,
            socket.gethostname(),
            me.pid,
            me.create_time(),
            time.time(),
            0.0,
            purpose,
        )
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire / release -------------------------------------------------------------
    def acquire(self) -> StoreLease:
        holder = self.try_acquire()
        if holder is not None:
            raise _refusal(self.url, holder)
        return self

    def try_acquire(self) -> dict[str, Any] | None:
        """Take the lease and start the heartbeat; else return who holds it."""
        holder = self.read()
        if holder is not None:
            if not holder.is_stale(time.time()):
                return holder.holder()
            self.fs.rm(self.path)  # take over a dead holder's lease
        self.record.expires = time.time() + self.ttl
        try:
            with self.fs.open(self.path, "xb") as f:  # exclusive: one of two racers wins
                f.write(self._payload())
        except FileExistsError:
            holder = self.read()
            return holder.holder() if holder else {"purpose": SHORT_PURPOSES[0]}
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="losa-lease", daemon=True)
        self._thread.start()
        return None

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
