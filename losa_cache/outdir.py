"""Output folders: safe names, a lock while a run writes, and the one guarded writer.

Names: task names, layer specs and other labels become folder names (``runs/<task>/``).
A label that is already one safe path segment (:data:`SEGMENT_RULE`) is used as is;
any other gets a readable slug plus a short hash of the label, so ``a/b`` and ``a_b``
never share a folder, and a folder's name never depends on which other labels a sweep has.

Locks: two runs writing into one ``--out`` at once overwrite each other's adapter and
interleave their logs. :class:`OutdirLock` holds an OS-level ``flock`` on a file in the
folder for the life of a run; the kernel drops it when the holder exits or is killed,
so a crashed run never blocks the next one, and sequential reuse behaves as before.
A folder inside a locked one (a sweep's member run, a MIST candidate) counts as locked.

Ownership: every command that writes run outputs (``train``, ``sweep``, a sweep's member
runs, MIST's candidates, best exports) first claims its folder with :func:`claim_outdir`.
A claimed folder holds :data:`MARKER`, written when the tool made the folder its own; a
folder holding anything without that marker is the user's and is refused, naming what
is there. Nothing is written or deleted through a symlink: a symlink anywhere inside a
claimed folder is refused, and :func:`atomic_write` never replaces one.

Writes: every file is written aside and renamed into place (:func:`atomic_write`), so a
kill mid-write leaves the previous complete file; the ``.NAME.tmp-PID`` files a kill
leaves are removed when the folder is next claimed. A failed write (full disk, read-only
folder) raises :class:`OutputWriteError`, naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from losa_cache.files import release_flock, try_flock
from losa_cache.oserrors import os_failure

__all__ = [
    "LOCK_FILE",
    "MARKER",
    "SEGMENT_RULE",
    "OutdirError",
    "OutdirInUse",
    "OutdirLock",
    "OutputWriteError",
    "atomic_write",
    "atomic_write_text",
    "claim_outdir",
    "commit",
    "folder_name",
    "folder_names",
    "is_safe_segment",
    "locked_outdir",
    "read_json",
    "remove_file",
    "remove_tree",
    "safe_subdir",
    "write_aside",
    "write_error",
]

#: One safe path segment: the same on every file system and object store, never ``.``
#: or ``..``, never hidden, and no separators. Task names follow this rule.
SEGMENT_RULE = (
    "1-64 characters from letters, digits, '_', '-' and '.', starting with a letter or digit"
)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOCK_FILE = ".losa-cache-out.lock"
#: written into a folder when a command claims it: the folder's files are the tool's
MARKER = ".losa-cache-out.json"
_TMP = re.compile(r"\..+\.tmp-\d+")  # what atomic_write writes aside (.NAME.tmp-PID)
#: how to go on after a failed write into an output folder
RETRY = "rerun the same command (train and sweep: with --resume)"
#: how torch.save reports a failed write (it hides the OSError)
_IO_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|file write failed|errno", re.I)


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
        _refuse_locked_ancestor(self.folder)
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.folder, e) from e
        try:
            fd, holder = try_flock(self.file, self._record())
        except OSError as e:
            self._forget_folder()
            raise write_error(self.file, e) from e
        if fd is None:
            self._forget_folder()
            raise self._refusal(holder)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        release_flock(self.fd, self.file)
        self.fd = None
        self._forget_folder()

    def _forget_folder(self) -> None:
        if self.created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                if os.listdir(self.folder) == [MARKER]:  # claimed, nothing written
                    (self.folder / MARKER).unlink()
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
        return _in_use(self.folder, raw)

    def __enter__(self) -> OutdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_outdir(folder: str | Path, purpose: str) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block writes into it."""
    with OutdirLock(folder, purpose) as lock:
        yield lock.folder


def _in_use(folder: Path, raw: bytes, inside: Path | None = None) -> OutdirInUse:
    try:
        rec = json.loads(raw.decode())
        who = f"{rec['command']} pid {rec['pid']} on {rec['host']} since {rec['since']}"
    except (ValueError, KeyError, TypeError):
        who = "a process that is just starting"
    where = (
        f"{inside} is inside output folder {folder}, which"
        if inside
        else (f"output folder {folder}")
    )
    return OutdirInUse(
        f"{where} is in use by {who}; wait for that run to finish (or stop it), or choose "
        "another --out"
    )


def _refuse_locked_ancestor(folder: Path) -> None:
    """A folder inside one a live run holds (a sweep's member run, a MIST candidate) is
    that run's: a shared flock on the holder's lock file fails while it runs."""
    for parent in folder.absolute().parents:
        file = parent / LOCK_FILE
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(parent, os.pread(fd, 400, 0), folder) from None
        finally:
            os.close(fd)  # drops the shared lock, if taken


# ------------------------------------------------------------------------------ ownership


class OutdirError(ValueError):
    """An output folder the tool may not write into: the user's files, or a symlink."""


def claim_outdir(
    folder: str | Path, purpose: str, proof: Iterable[str] = (), known: Iterable[str] = ()
) -> Path:
    """Make ``folder`` this tool's output folder, or refuse it; returns it.

    Accepted: a missing or empty folder, one holding :data:`MARKER` (claimed before), or
    one written by a version before the marker: it holds a ``proof`` file (e.g.
    ``checkpoint.pt``) and only ``known`` names. Refused, naming what is there: anything
    else (the user's own ``metrics.json``), and a symlink anywhere inside. The
    ``.NAME.tmp-PID`` files of a killed write are removed (the caller holds the lock).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutdirError(f"{folder} is a file, not a folder: choose a folder for --out")
    entries = _entries(folder)
    links = _symlinks(folder)
    if links:
        raise OutdirError(
            f"{folder} holds symlinks ({_listing(links)}); losa-cache never writes through a "
            "symlink: remove them, or choose a new --out"
        )
    mine = [e for e in entries if e not in (LOCK_FILE, MARKER) and not _TMP.fullmatch(e)]
    if mine and MARKER not in entries and not _legacy(mine, proof, known):
        raise OutdirError(
            f"{folder} holds files losa-cache did not write ({_listing(mine)}); refusing to "
            "write into it: choose a new or empty --out (or move those files out)"
        )
    for name in entries:
        if _TMP.fullmatch(name):
            with contextlib.suppress(OSError):
                (folder / name).unlink()  # a killed write's leftover
    if MARKER not in entries:
        stamp = {"by": purpose, "created": _now()}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(folder, e) from e
        atomic_write_text(folder / MARKER, json.dumps(stamp) + "\n")
    return folder


def _legacy(entries: list[str], proof: Iterable[str], known: Iterable[str]) -> bool:
    """A folder of an earlier version: holds a proof file and only names the tool writes."""
    proof, known = set(proof), set(known) | set(proof)
    return bool(proof & set(entries)) and set(entries) <= known


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise write_error(folder, e) from e


def _symlinks(folder: Path) -> list[str]:
    """Paths (relative to ``folder``) of the symlinks inside it, not following any."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            path = Path(root, name)
            if path.is_symlink():
                found.append(str(path.relative_to(folder)))
    return sorted(found)


def safe_subdir(root: str | Path, *parts: str) -> Path:
    """``root/parts...``, made where missing; refuses a symlink on the way (a folder the
    tool writes into is never reached through a link)."""
    path = Path(root)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise OutdirError(
                f"{path} is a symlink; losa-cache never writes through a symlink: remove it, "
                "or choose a new --out"
            )
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            raise write_error(path, e) from e
    return path


def remove_file(path: str | Path) -> None:
    """Delete a file the tool wrote (if there); a symlink in its place is refused."""
    path = Path(path)
    if path.is_symlink():
        raise OutdirError(
            f"refusing to delete {path}: it is a symlink; losa-cache never "
            "deletes through a symlink: remove it by hand"
        )
    path.unlink(missing_ok=True)


def remove_tree(path: str | Path) -> None:
    """Delete a folder the tool wrote; a symlink (to it or inside it) is refused."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    links = [str(path)] if path.is_symlink() else [str(path / p) for p in _symlinks(path)]
    if links:
        raise OutdirError(
            f"refusing to delete {path}: it is or holds a symlink ({_listing(links)}); "
            "losa-cache never deletes through a symlink: remove it by hand"
        )
    shutil.rmtree(path)


def _listing(names: list[str]) -> str:
    more = f", ... ({len(names)} entries)" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ writes


class OutputWriteError(OSError, ValueError):
    """A write into an output folder failed (full disk, read-only folder); the message
    names the file and the fix. What the failed write created is already removed."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(path: str | Path, cause: BaseException) -> OutputWriteError:
    """``cause`` (an OSError, or torch.save's RuntimeError that hides one) as an
    :class:`OutputWriteError` naming ``path`` and the fix."""
    code = getattr(cause, "errno", None)
    if code is None:  # torch's writer hides the OSError: ask the disk
        code = errno.ENOSPC if _nearly_full(Path(path)) else errno.EIO
    fix = os_failure(code, "--out", RETRY) or (f"{os.strerror(code)}: check the disk, then {RETRY}")
    return OutputWriteError(code, f"cannot write {path}: {fix}", str(path))


def _nearly_full(path: Path) -> bool:
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < (1 << 20)
    return False


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` via ``write(tmp)`` and a rename: readers (and a kill at any point)
    see the old complete file or the new one. A symlink at ``path`` is refused (the
    rename would replace the link, never write through it, but its target was meant)."""
    path = Path(path)
    commit(write_aside(path, write), path)
    return path


def write_aside(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """The first half of :func:`atomic_write`: ``write(tmp)`` beside ``path``, synced to
    disk; returns ``tmp`` for :func:`commit` (several files renamed in a chosen order).
    On failure the temporary file is removed and the error names ``path``."""
    path = Path(path)
    if path.is_symlink():
        raise OutdirError(
            f"{path} is a symlink; losa-cache never writes through a symlink: "
            "remove it, or choose a new --out"
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):
            raise write_error(path, e) from e
        if isinstance(e, RuntimeError) and _IO_FAILURE.search(str(e)):  # torch.save's
            raise write_error(path, e) from e
        raise
    return tmp


def commit(tmp: Path, path: str | Path) -> None:
    """The second half of :func:`atomic_write`: rename ``tmp`` over ``path``."""
    try:
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C too: the old file stays, the aside one goes
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise write_error(path, e) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | Path, fix: str) -> Any:
    """A JSON file the tool wrote; a damaged one (cut short, edited) is refused naming the
    file and ``fix`` (e.g. "restore it, or start again into a new --out")."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OutdirError(
            f"{path} is damaged or incomplete ({e.__class__.__name__}: {str(e)[:80]}); {fix}"
        ) from None


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
