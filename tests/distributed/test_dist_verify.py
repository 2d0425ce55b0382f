"""`losa-cache verify`: damaged or truncated shards behind a done marker are named, and
rerunning extract rewrites exactly those."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from _dist_helpers import assert_same_store, cli_args
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import open_store

runner = CliRunner()


def damage(store: Path) -> None:
    """Shard 3 of block 1 truncated, one bit of shard 7 of block 2 flipped, status of
    shard 5 deleted: each behind a done marker."""
    trunc = store / "features/block_001/c/3/0/0"
    trunc.write_bytes(trunc.read_bytes()[:100])
    flip = store / "features/block_002/c/7/0/0"
    data = bytearray(flip.read_bytes())
    data[200] ^= 0x01
    flip.write_bytes(bytes(data))
    (store / "index/status/c/5").unlink()


def test_verify_names_bad_shards_and_extract_repairs_exactly_those(
    client: Any, reference_store: str, tmp_path: Path
) -> None:
    path = tmp_path / "damaged.zarr"
    shutil.copytree(reference_store, path)
    ok = runner.invoke(app, ["verify", str(path)])
    assert ok.exit_code == 0 and "19 of 19 shards checked, all match" in ok.output
    damage(path)
    assert open_store(str(path)).complete, "the done markers still say complete"
    found = runner.invoke(app, ["verify", str(path), "--json"])
    assert found.exit_code == 1
    report = json.loads(found.stdout)
    assert report["bad_shards"] == [3, 5, 7] and not report["repaired"]
    assert {(b["shard"], b["array"]) for b in report["bad"]} == {
        (3, "features/block_001"),
        (5, "index/status"),
        (7, "features/block_002"),
    }
    human = runner.invoke(app, ["verify", str(path)]).output
    assert "shard 3 rows 48-63 features/block_001" in human
    repaired = runner.invoke(app, ["verify", str(path), "--repair"])
    assert repaired.exit_code == 0 and "rerun" in repaired.output
    assert open_store(str(path)).done_shards().sum() == 16
    assert not (path / "features/block_001/c/3/0/0").exists(), "damaged objects are removed"
    address = f"--scheduler={client.scheduler.address}"
    out = runner.invoke(app, [*cli_args(str(path)), address, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["shards_written"] == 3 and result["written"] == 48
    assert runner.invoke(app, ["verify", str(path)]).exit_code == 0
    assert_same_store(str(path), reference_store)


def test_new_commands_have_help_examples_and_one_line_errors(tmp_path: Path) -> None:
    for cmd in ["verify", "export", "import", "extract"]:
        assert "Example:" in runner.invoke(app, [cmd, "--help"]).output, cmd
    out = runner.invoke(app, ["info", "s3://b/s.zarr", "--storage-options", "{nope"])
    assert out.exit_code == 2 and "--storage-options is not valid JSON" in out.output
    out = runner.invoke(app, ["verify", str(tmp_path / "missing.zarr")])
    assert out.exit_code == 2 and "no losa-cache store" in out.output
    assert "Traceback" not in out.output
