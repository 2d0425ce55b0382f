"""`predict`'s error column names the input that failed, never a Python object."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.data.base import ImageDecodeError
from losa_cache.data.decode import open_rgb


def test_an_unreadable_file_is_named(photos: Path, plain_photo_store: str, tmp_path: Path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(photos / "cat" / "0.jpg", folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"hello, not an image")
    train = ["train", "--store", plain_photo_store, "--method", "linear", "--steps", "2",
             "--device", "cpu", "--workers", "0", "--val-split", "none"]  # fmt: skip
    run = CliRunner().invoke(app, [*train, "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    predict = ["predict", "--adapter", str(tmp_path / "run"), "--random-init", "--device", "cpu"]
    res = CliRunner().invoke(app, [*predict, "--csv", str(folder)])
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(res.stdout))}
    assert rows["good.jpg"]["error"] == "" and rows["good.jpg"]["class_1"]
    err = rows["broken.jpg"]["error"]
    assert str(folder / "broken.jpg") in err and "cannot identify image file" in err
    assert "object at 0x" not in res.output and "BytesIO" not in res.output
    table = CliRunner().invoke(app, [*predict, str(folder)])
    assert "object at 0x" not in table.output and "broken.jpg" in table.output


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG not really")
    try:
        open_rgb(bad)
    except ImageDecodeError as e:
        assert str(bad) in str(e) and "0x" not in str(e), str(e)
    else:
        raise AssertionError("a broken file decoded")
