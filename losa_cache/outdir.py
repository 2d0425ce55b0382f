"""Output folders: safe names made from labels, and a lock while a run writes into one.

Names: task names, layer specs and other labels become folder names (``runs/<task>/``).
A label that is already one safe path segment (:data:`SEGMENT_RULE`) is used as is;
any other gets a readable slug plus a short hash of the label, so ``a/b`` and ``a_b``
never share a folder, and a folder's name never depends on which other labels a sweep has.

Locks: two runs writing into one ``--out`` at once overwrite each other's adapter and
interleave their logs. :class:`OutdirLock` holds an OS-level ``flock`` on a file in the
folder for the life of a run; the kernel drops it when the holder exits or is killed,
so a crashed run never blocks the next one, and sequential reuse behaves as before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "SEGMENT_RULE",
    "OutdirInUse",
    "OutdirLock",
    "folder_name",
    "folder_names",
    "is_safe_segment",
    "locked_outdir",
]

#: One safe path segment: the same on every file system and object store, never ``.``
#: or ``..``, never hidden, and no separators. Task names follow this rule.
SEGMENT_RULE = (
    "1-64 characters from letters, digits, '_', '-' and '.', starting with a letter or digit"
)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOCK_FILE = ".losa-cache-out.lock"


def is_safe_segment(text: str) -> bool:
    """True if ``text`` follows :data:`SEGMENT_RULE`."""
    return isinstance(text, str) and _SEGMENT.fullmatch(text) is not None


def folder_name(label: str) -> str:
    """``label`` as one folder name: itself when safe, else ``<slug>-<hash>``."""
    if is_safe_segment(label):
        return label
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.-")[:48] or "x"
    return f"{slug}-{hashlib.sha1(label.encode()).hexdigest()[:8]}"


def folder_names(labels: Iterable[str]) -> dict[str, str]:
    """:func:`folder_name` of each label; refuses two labels that would share a folder,
    also case-insensitively (one folder on macOS and Windows disks)."""
    names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for label in dict.fromkeys(labels):
        name = folder_name(label)
        other = seen.setdefault(name.casefold(), label)
        if other != label:
            raise ValueError(
                f"{other!r} and {label!r} would share the output folder {name!r}; rename one "
                f"({SEGMENT_RULE})"
            )
        names[label] = name
    return names


# ------------------------------------------------------------------------------ lock


class OutdirInUse(RuntimeError):
    """Another live process writes into the output folder."""


class OutdirLock:
    """An exclusive flock on ``<folder>/.losa-cache-out.lock`` for the life of a run.

    The lock file names its holder (pid, host, command, since) for the refusal message
    and is removed on release; a folder the lock created is removed again if the run
    left it empty (it failed before writing anything).
    """

    def __init__(self, folder: str | Path, purpose: str) -> None:
        self.folder = Path(folder)
        self.file = self.folder / LOCK_FILE
        self.purpose = purpose
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> OutdirLock:
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 400, 0)
                os.close(fd)
                self._forget_folder()
                raise self._refusal(holder) from None
            if not _same_file(fd, self.file):  # locked a file its holder just removed
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self._record()).encode(), 0)
            self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()  # while still held: a waiter re-checks the inode
        os.close(self.fd)
        self.fd = None
        self._forget_folder()

    def _forget_folder(self) -> None:
        if self.created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                self.folder.rmdir()
            self.created = False

    def _record(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.purpose,
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def _refusal(self, raw: bytes) -> OutdirInUse:
        try:
            rec = json.loads(raw.decode())
            who = f"{rec['command']} pid {rec['pid']} on {rec['host']} since {rec['since']}"
        except (ValueError, KeyError, TypeError):
            who = "a process that is just starting"
        return OutdirInUse(
            f"output folder {self.folder} is in use by {who}; wait for that run to finish "
            "(or stop it), or choose another --out"
        )

    def __enter__(self) -> OutdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_outdir(folder: str | Path, purpose: str) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block writes into it."""
    with OutdirLock(folder, purpose) as lock:
        yield lock.folder


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def fresh_folder(kind: str, root: str | Path = "runs") -> str:
    """A new folder ``root/<kind>-<YYYYmmdd-HHMMSS>`` (UTC; ``-2``, ``-3``... when taken),
    created here so a second run started in the same second cannot claim it too: the
    default ``--out`` of train and sweep, so a second run never refuses or overwrites."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = Path(root) / (f"{kind}-{stamp}" if n == 1 else f"{kind}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return str(path)
    raise AssertionError("unreachable")
