"""`predict` options: bad numbers are one clear line, and --max-pixels reaches the decoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from losa_cache.adapter import save_adapter
from losa_cache.cli.main import app
from losa_cache.side import SideConfig, create_side
from losa_cache.store import open_store


@pytest.fixture(scope="module")
def adapter_dir(micro_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = open_store(micro_store)
    config = SideConfig(num_layers=4, dim=32, tokens=17, num_classes=9, rank=2, layers=[3])
    meta = {"fingerprint": store.fingerprint, "classes": store.classes(), "task": "position"}
    return save_adapter(tmp_path_factory.mktemp("adapter"), create_side(config), config, meta)


def _predict(adapter_dir: Path, image: Path, *args: str) -> tuple[int, str]:
    cmd = ["predict", "--adapter", str(adapter_dir), "--random-init", str(image), *args]
    result = CliRunner().invoke(app, cmd)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--seed", "-1"], "error: --seed must be an integer >= 0, got -1"),
        (["--top-k", "0"], "error: --top-k must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "error: --batch-size must be an integer >= 1, got 0"),
        (
            ["--batch-size", "100000"],
            "error: --batch-size must be an integer >= 1 and <= 65536 "
            "(a larger batch only exhausts memory",
        ),
        (["--max-file-bytes", "0"], "error: the size '0' is not positive"),
        (
            ["--seed", str(10**30)],
            "error: --seed must be an integer >= 0 and <= "
            "9223372036854775807 (it must fit in 64 bits)",
        ),
        (["--max-pixels", "0"], "error: --max-pixels must be an integer >= 1, got 0"),
        (["--device", "gpu"], "error: --device 'gpu' is not a device"),
    ],
)
def test_bad_numbers_are_one_line(
    adapter_dir: Path, tmp_path: Path, args: list[str], match: str
) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code, out = _predict(adapter_dir, tmp_path / "a.png", *args)
    assert code == 2 and out.startswith(match) and len(out.strip().splitlines()) == 1, out


def test_max_pixels_refuses_a_big_image_by_name(adapter_dir: Path, tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    code, out = _predict(adapter_dir, tmp_path / "big.png", "--max-pixels", "1000", "--json")
    assert code == 1
    row = json.loads(out[: out.rindex("]") + 1])[0]
    assert "1,200 pixels is over the limit of 1,000" in row["error"]
    assert "--max-pixels" in row["error"]
    code, out = _predict(adapter_dir, tmp_path / "big.png", "--max-pixels", "1200", "--json")
    assert code == 0, out
