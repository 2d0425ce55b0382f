"""Input files through the CLI: a FIFO, a sparse giant and a name that is not UTF-8 in an
image folder are skipped or left out by name, never hang or fail the run; ``predict`` on a
FIFO or a device is an error row; ``--max-file-bytes`` reaches both commands.

Before (issue 26, items 12, 14, 15): ``extract`` hung on the FIFO, read the 3 GB file
whole, and failed the whole run on the name ("surrogates not allowed"); ``predict
/dev/zero`` read until memory ran out.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from losa_cache.adapter import save_adapter
from losa_cache.cli.main import app
from losa_cache.side import SideConfig, create_side
from losa_cache.store import open_store

BAD = os.fsdecode(b"bad\xff.png")


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def stop(*_: object) -> None:
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(120)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _image(path: Path, seed: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    """cat/{a.png, p.png (FIFO), huge.png (3 GB sparse), bad\\xff.png}, dog/{b.png, c.png}."""
    root = tmp_path / "pets"
    _image(root / "cat" / "a.png", 0)
    _image(root / "cat" / BAD, 1)
    _image(root / "dog" / "b.png", 2)
    _image(root / "dog" / "c.png", 3)
    os.mkfifo(root / "cat" / "p.png")
    with (root / "cat" / "huge.png").open("wb") as f:
        f.truncate(3 * 2**30)
    return root


def _extract(root: Path, store: Path, *more: str) -> tuple[int, str]:
    args = ["extract", "--model", "vit_micro", "--random-init", "--workers", "0", "--json",
            "--dataset", f"imagefolder:{root}", "--store", str(store), *more]  # fmt: skip
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_extract_skips_what_it_cannot_read_by_name(hostile_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"bad\\xff\.png is left out: its name is not valid"):
        code, out = _extract(hostile_folder, tmp_path / "s.zarr")
    assert code == 0, out
    result = json.loads(out[out.index("{") :])
    reasons = {Path(s["error"].split("'")[1]).name: s["error"] for s in result["skipped"]}
    assert set(reasons) == {"p.png", "huge.png"}
    assert "not a regular file (a FIFO/pipe)" in reasons["p.png"]
    assert "3,221,225,472 bytes is over the limit" in reasons["huge.png"]
    store = open_store(str(tmp_path / "s.zarr"))
    assert list(store.sources) == [
        "cat/a.png",
        "cat/huge.png",
        "cat/p.png",
        "dog/b.png",
        "dog/c.png",
    ]


def test_max_file_bytes_reaches_extract(hostile_folder: Path, tmp_path: Path) -> None:
    limit = (hostile_folder / "dog" / "b.png").stat().st_size - 1
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        code, out = _extract(hostile_folder, tmp_path / "s.zarr", "--max-file-bytes", str(limit))
    assert code == 0, out
    skipped = {s["error"].split("'")[1] for s in json.loads(out[out.index("{") :])["skipped"]}
    assert len(skipped) == 5  # every readable image is now over the bound as well


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def adapter_dir(micro_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = open_store(micro_store)
    config = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=9, rank=2, layers=[3])
    meta = {"fingerprint": store.fingerprint, "classes": store.classes(), "task": "position"}
    return save_adapter(tmp_path_factory.mktemp("adapter"), create_side(config), config, meta)


def _predict(adapter_dir: Path, *args: str) -> tuple[int, str]:
    cmd = ["predict", "--adapter", str(adapter_dir), "--random-init", *args]
    result = CliRunner().invoke(app, cmd)
    return result.exit_code, result.output


def test_predict_reports_a_fifo_and_a_device_and_reads_the_rest(
    adapter_dir: Path, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "p.png")
    good = _image(tmp_path / "good.png", 0)
    code, out = _predict(adapter_dir, str(tmp_path / "p.png"), "/dev/zero", str(good), "--json")
    assert code == 0, out
    rows = json.loads(out[: out.rindex("]") + 1])
    assert "not a regular file (a FIFO/pipe)" in rows[0]["error"]
    assert "not a regular file (a character device)" in rows[1]["error"]
    assert rows[2]["error"] is None and rows[2]["labels"]


def test_predict_reads_a_non_utf8_name_and_prints_it(adapter_dir: Path, tmp_path: Path) -> None:
    """The file is read by its real name; every output shows it as ``\\xff``."""
    _image(tmp_path / BAD, 0)
    same = _image(tmp_path / "same.png", 0)
    for fmt in ("--csv", None):  # the table
        code, out = _predict(adapter_dir, str(tmp_path / BAD), str(same), *([fmt] if fmt else []))
        assert code == 0, out
        assert "bad\\xff.png" in out
    code, out = _predict(adapter_dir, str(tmp_path / BAD), str(same), "--json")
    rows = json.loads(out)
    assert Path(rows[0]["path"]).name == "bad\\xff.png"
    assert rows[0]["probs"] == rows[1]["probs"]  # same pixels, same prediction


def test_max_file_bytes_reaches_predict(adapter_dir: Path, tmp_path: Path) -> None:
    image = _image(tmp_path / "a.png", 0)
    size = image.stat().st_size
    code, out = _predict(adapter_dir, str(image), "--json", "--max-file-bytes", str(size - 1))
    assert code == 1
    assert "--max-file-bytes" in json.loads(out[: out.rindex("]") + 1])[0]["error"]
    code, out = _predict(adapter_dir, str(image), "--json", "--max-file-bytes", str(size))
    assert code == 0, out
