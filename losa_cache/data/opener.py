"""The one way a data file is opened: regular files only, never more than a size bound.

Every reader of user data goes through here (images, video files, frame folders, list
files, annotation JSONs and CSVs, ``predict``'s inputs), so one rule decides what may be
read: a FIFO named ``p.jpg`` would block ``open()`` forever, ``/dev/zero`` never ends, a
3 GB sparse ``huge.jpg`` would be read whole into memory. The file is opened without
blocking (``O_NONBLOCK``: opening a FIFO returns at once), then the *opened* descriptor is
checked (``fstat``: no race with a rename between check and read), and reads stop one byte
past the bound. Failures are :class:`FileRefused` with a reason a row or message can carry;
callers turn it into their own error (a skipped row, an error row, a one-line message).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from losa_cache.data.base import DatasetError

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_VIDEO_BYTES",
    "MAX_TEXT_BYTES",
    "FileRefused",
    "open_regular",
    "printable",
    "read_regular",
    "text_stream",
]

#: Largest image file read (``--max-file-bytes``): 256 MiB, far above any photo or scan a
#: ViT is fed (a 100 MP camera JPEG is ~50 MB), far below what hurts the memory of a worker.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
#: Largest video file opened when ``--max-file-bytes`` is not given: videos are streamed
#: (not read whole), so the bound is only against absurd inputs; 4 GiB holds an hour of
#: 1080p H.264, and the decoded frames are bounded by ``--max-pixels`` per frame.
DEFAULT_MAX_VIDEO_BYTES = 4 * 2**30
#: Largest list file, annotation JSON or CSV read (iNat 2021's train JSON is ~0.6 GB).
MAX_TEXT_BYTES = 4 * 2**30
_FIX = "pass a larger --max-file-bytes if the file is trusted"


class FileRefused(DatasetError):
    """``path`` was not read: ``reason`` says why (missing, not a regular file, too big).

    A :class:`DatasetError`, so a list or annotation file that cannot be read is a one-line
    message; image and video readers turn it into a skipped row instead."""

    def __init__(self, path: str | Path, reason: str, missing: bool = False) -> None:
        super().__init__(f"{printable(path)}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.missing = missing


def printable(path: str | Path) -> str:
    """``path`` as text any output takes: bytes that are not UTF-8 (a file name from another
    system, decoded by Python as lone surrogates) are written ``\\xNN``."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def open_regular(path: str | Path, max_bytes: int | None, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file of at most ``max_bytes``
    (None: no size bound), else :class:`FileRefused`; the caller closes it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as err:
        raise FileRefused(path, f"{what} not found", missing=True) from err
    except OSError as err:
        raise FileRefused(path, f"cannot open the {what} ({err.strerror or err})") from err
    try:
        _check(path, os.fstat(fd), max_bytes, what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, max_bytes: int | None, what: str = "file") -> bytes:
    """The bytes of ``path`` (see :func:`open_regular`); a file that grew past ``max_bytes``
    while read (or one whose size the kernel reports as 0, as /proc's) is refused too."""
    with open_regular(path, max_bytes, what) as f:
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as err:
            raise FileRefused(path, f"cannot read the {what} ({err.strerror or err})") from err
    if max_bytes is not None and len(data) > max_bytes:
        raise FileRefused(path, f"{what} is over the limit of {max_bytes:,} bytes; {_FIX}")
    return data


def _check(path: str | Path, st: os.stat_result, max_bytes: int | None, what: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused(path, f"a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, f"not a regular file ({_kind(st.st_mode)}); only files are read")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileRefused(
            path, f"{what} of {st.st_size:,} bytes is over the limit of {max_bytes:,}; {_FIX}"
        )


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO/pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a file")


def text_stream(path: str | Path, what: str) -> io.TextIOWrapper:
    """A list/annotation file opened as UTF-8 text (a BOM dropped), through the same checks
    (bounded by :data:`MAX_TEXT_BYTES`)."""
    return io.TextIOWrapper(
        open_regular(path, MAX_TEXT_BYTES, what), encoding="utf-8-sig", newline=""
    )
