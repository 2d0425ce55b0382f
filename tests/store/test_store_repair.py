"""`verify --repair` is crash-safe and idempotent: a real SIGKILL at any step of it leaves a
store that `verify` describes truthfully and `extract` resumes to the uninterrupted store.
Resume rewrites a not-done shard whole without reading it, whatever is left of it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import schema as S
from losa_cache.store.store import open_group

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from _dist_helpers import assert_same_store

runner = CliRunner()
#: 60 rows in 8 shards of 8 (the last one short, 4 rows), 4 blocks
CFG = dict(
    model="vit_micro",
    random_init=True,
    workers=0,
    dataset="demo",
    limit=20,
    shard_rows=8,
    chunk_rows=4,
    batch_size=4,
    dtype="float32",
)
DAMAGED = [1, 3, 7]


@pytest.fixture(scope="module")
def reference(make_store) -> str:
    return make_store("ref", **CFG)


def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def damage(store: Path) -> None:
    """Behind done markers: shard 1 of block 1 truncated, one bit of shard 3 of block 2
    flipped, the status chunk of the short last shard 7 deleted."""
    truncate(store / "features/block_001/c/1/0/0")
    flip(store / "features/block_002/c/3/0/0")
    (store / "index/status/c/7").unlink()


def verify(path: Path, *flags: str) -> tuple[int, dict]:
    out = runner.invoke(app, ["verify", str(path), "--json", *flags])
    assert "Traceback" not in out.output
    return out.exit_code, json.loads(out.stdout)


def resume_and_compare(path: Path, reference: str, rewritten: list[int]) -> None:
    result = extract(ExtractConfig(store=str(path), **CFG), progress=False)
    assert result.resumed and result.shards_written == len(rewritten)
    assert_same_store(str(path), reference)
    code, report = verify(path)
    assert code == 0 and report["bad_shards"] == [] and report["pending_shards"] == []


#: `verify --repair` that SIGKILLs itself before the n-th deletion of one kind: a real kill
#: at a chosen point of the repair (the hook wraps zarr's local store and knows no repair
#: code; a cleared done marker is a deleted chunk, since 0 is the fill value)
KILL_SCRIPT = """
import os, signal, sys
from zarr.storage import LocalStore
from losa_cache.cli.main import main

path, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
real, seen = LocalStore.delete, [0]

async def delete(self, key):
    if key.startswith("progress/done/") == (kind == "marker"):
        seen[0] += 1
        if seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return await real(self, key)

LocalStore.delete = delete
sys.argv = ["losa-cache", "verify", path, "--repair", "--json"]
main()
"""


@pytest.mark.parametrize(
    "kind, n",
    [
        ("marker", 2),  # one marker cleared, two damaged shards still marked done
        ("object", 1),  # every marker cleared, no damaged object removed: main lost it here
        ("object", 4),  # some damaged objects removed, others left
    ],
)
def test_repair_killed_at_any_point_verifies_truthfully_and_resumes(
    kind: str, n: int, reference: str, tmp_path: Path
) -> None:
    path = tmp_path / "damaged.zarr"
    shutil.copytree(reference, path)
    damage(path)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(path), kind, str(n)], capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    code, report = verify(path)
    still_bad, pending = set(report["bad_shards"]), set(report["pending_shards"])
    assert still_bad | pending == set(DAMAGED) and not still_bad & pending
    assert code == (1 if still_bad else 0)
    assert pending, "the kill lands after the first marker is cleared"
    if (kind, n) == ("object", 1):  # every damaged shard unmarked, with its leftovers
        assert report["partial_shards"] == DAMAGED
        human = runner.invoke(app, ["verify", str(path)]).output
        assert "3 shard(s) not extracted yet (shards 1, 3, 7), 3 with leftovers" in human
    # a second repair finishes the job; running it once more changes nothing
    code, report = verify(path, "--repair")
    assert code == 0 and report["pending_shards"] == DAMAGED
    code, again = verify(path, "--repair")
    assert code == 0 and not again["repaired"] and again["pending_shards"] == DAMAGED
    resume_and_compare(path, reference, DAMAGED)


def test_damaged_not_done_shards_never_block_resume(reference: str, tmp_path: Path) -> None:
    """A killed run's leftovers in shards without a marker: truncated, flipped, garbage."""
    path = tmp_path / "leftovers.zarr"
    shutil.copytree(reference, path)
    group = open_group(str(path), mode="r+")
    for shard in (2, 7):
        group[S.DONE][shard] = 0
    truncate(path / "features/block_000/c/2/0/0", keep=10)
    truncate(path / "features/block_003/c/2/0/0", keep=0)
    flip(path / "features/block_001/c/7/0/0", at=-10)
    (path / "index/status/c/7").write_bytes(b"\xff" * 7)
    code, report = verify(path)
    assert code == 0 and report["bad_shards"] == [] and report["shards_checked"] == 6
    assert report["pending_shards"] == [2, 7] and report["partial_shards"] == [2, 7]
    resume_and_compare(path, reference, [2, 7])


def test_unreadable_markers_and_checksum_rows_are_damage_that_repair_fixes(
    reference: str, tmp_path: Path
) -> None:
    path = tmp_path / "markers.zarr"
    shutil.copytree(reference, path)
    (path / "progress/done/c/2").write_bytes(b"\xff" * 7)
    (path / "progress/checksums/c/4/0").write_bytes(b"\xff" * 3)
    code, report = verify(path)
    assert code == 1 and report["bad_shards"] == [2, 4]
    assert {(b["shard"], b["array"]) for b in report["bad"]} == {(2, S.DONE), (4, S.CHECKSUMS)}
    code, report = verify(path, "--repair")
    assert code == 0 and report["pending_shards"] == [2, 4]
    resume_and_compare(path, reference, [2, 4])


def test_extract_rewrites_a_shard_with_an_unreadable_marker(reference: str, tmp_path: Path) -> None:
    path = tmp_path / "marker.zarr"
    shutil.copytree(reference, path)
    (path / "progress/done/c/5").write_bytes(b"\xff" * 7)
    resume_and_compare(path, reference, [5])
