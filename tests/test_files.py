"""The one sha256 and the one flock (losa_cache.files) that outdir and store locks share."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from losa_cache.files import release_flock, sha256_file, try_flock


def test_sha256_file_is_the_bytes_hash(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    data = bytes(range(256)) * 9000  # more than one 1 MiB block
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_one_holder_at_a_time_named_to_the_next(tmp_path: Path) -> None:
    file = tmp_path / ".x.lock"
    fd, _ = try_flock(file, {"pid": 1, "command": "train"})
    assert fd is not None
    again, holder = try_flock(file, {"pid": 2})  # a second open file description
    assert again is None and json.loads(holder) == {"pid": 1, "command": "train"}
    release_flock(fd, file)
    assert not file.exists()
    fd, _ = try_flock(file, {"pid": 2})
    assert fd is not None and json.loads(file.read_text()) == {"pid": 2}
    release_flock(fd, file)


def test_never_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("user data")
    (tmp_path / ".x.lock").symlink_to(target)
    with pytest.raises(OSError):
        try_flock(tmp_path / ".x.lock", {"pid": 1})
    assert target.read_text() == "user data"
