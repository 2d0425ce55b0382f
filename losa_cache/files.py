"""File helpers below every other module (no project imports): a file's sha256 and the
one exclusive ``flock`` that output folders (:class:`~losa_cache.outdir.OutdirLock`) and
local stores (:mod:`losa_cache.store.lease`) are locked with.

The lock file names its holder (a JSON record) for the refusal message and is removed on
release while still held; a waiter that locked the removed inode notices and opens the
new file, so two processes never both hold "the" lock. The kernel drops a flock when
its holder exits or is killed: a crashed run never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["release_flock", "sha256_file", "try_flock"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (adapters, weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def try_flock(file: Path, record: dict[str, Any]) -> tuple[int | None, bytes]:
    """Take the exclusive lock on ``file`` and write ``record`` into it: ``(fd, b"")``;
    or, held by another process, ``(None, what the holder wrote)``. Never follows a
    symlink. ``OSError`` (read-only folder, full disk) leaves no lock behind."""
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0)
            os.close(fd)
            return None, holder
        if _same_file(fd, file):
            break
        os.close(fd)  # locked a file its holder just removed: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except OSError as e:
        release_flock(fd, file)
        raise OSError(e.errno, e.strerror, str(file)) from e
    return fd, b""


def release_flock(fd: int, file: Path) -> None:
    """Remove the lock file while still holding it (a waiter re-checks the inode), then
    drop the lock."""
    with contextlib.suppress(OSError):
        file.unlink()
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
