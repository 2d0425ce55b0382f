"""``subset``: a smaller copy, bit-exact, resumable after SIGKILL, local and memory://."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from losa_cache.store import open_store
from losa_cache.store.quant import quantize
from losa_cache.store.store import StoreError
from losa_cache.store.subset import subset_store
from losa_cache.store.writer import verify_store


@pytest.fixture(scope="module")
def source(make_store) -> str:
    return make_store("src", limit=5, chunk_rows=2, shard_rows=4, batch_size=4,
                      layers="0,2,3", taps="blocks,embed,mlp,sum:2", dtype="bf16")  # fmt: skip


def check_copy(src: str, dst: str, layers: list[int], taps: list[str], split: str) -> None:
    a, b = open_store(src), open_store(dst)
    rows = a.split_rows(split, valid_only=False)
    assert b.taps == taps and b.layers == (layers if "blocks" in taps else [])
    assert b.fingerprint == a.fingerprint and b.manifest.subset["source"] == src
    assert list(b.splits) == [split] and b.num_images == len(rows)
    np.testing.assert_array_equal(b.labels(), a.labels()[rows])
    np.testing.assert_array_equal(b.sources, a.sources[rows])
    for tap in taps:
        for block in layers if tap in ("blocks", "mlp") else [None]:
            want = a.tap_features(tap, block).read_torch(rows).view(torch.int16)
            got = b.tap_features(tap, block).read_torch(slice(None)).view(torch.int16)
            assert torch.equal(got, want)  # bf16 bits, bit-exact


def test_subset_is_bit_exact(tmp_path: Path, source: str) -> None:
    dst = str(tmp_path / "dst.zarr")
    out = subset_store(source, dst, layers="2,3", taps="blocks,sum:2", rows=["val"])
    assert out["shards_written"] == out["shards_total"]
    check_copy(source, dst, [2, 3], ["blocks", "sum:2"], "val")
    assert verify_store(dst)["bad"] == []
    again = subset_store(source, dst, layers="2,3", taps="blocks,sum:2", rows=["val"])
    assert again["shards_written"] == 0
    with pytest.raises(StoreError, match="holds another store or subset"):
        subset_store(source, dst, layers="3", taps="blocks,sum:2", rows=["val"])
    with pytest.raises(StoreError, match="holds blocks"):
        subset_store(source, str(tmp_path / "x.zarr"), layers="1")
    with pytest.raises(StoreError, match="not"):
        subset_store(source, str(tmp_path / "y.zarr"), taps="attn")


def test_subset_to_memory_and_int8(source: str) -> None:
    dst = "memory://subset-int8.zarr"
    subset_store(source, dst, taps="embed", dtype="int8", rows=["train"])
    a, b = open_store(source), open_store(dst)
    rows = a.split_rows("train", valid_only=False)
    codes, scales = b.tap_features("embed").raw(slice(None))
    q, s = quantize(a.tap_features("embed").read_torch(rows).float())
    np.testing.assert_array_equal(codes, q.numpy())
    np.testing.assert_array_equal(scales, s.numpy())
    assert verify_store(dst)["bad"] == []


KILL = """
import os, signal, sys
from losa_cache.store import writer
from losa_cache.store.subset import subset_store
real, n = writer.ShardWriter.write, []
def write(self, shard, *a, **k):
    n.append(shard)
    if len(n) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, shard, *a, **k)
writer.ShardWriter.write = write
subset_store(sys.argv[1], sys.argv[2], layers="0", taps="blocks,mlp")
"""


def test_subset_resumes_after_sigkill(tmp_path: Path, source: str) -> None:
    dst = str(tmp_path / "killed.zarr")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL, source, dst], env=env, timeout=120)
    assert proc.returncode == -9
    assert not open_store(dst).complete
    subset_store(source, dst, layers="0", taps="blocks,mlp")
    a, b = open_store(source), open_store(dst)
    for tap in ("blocks", "mlp"):
        want = a.tap_features(tap, 0).read_torch(slice(None)).view(torch.int16)
        assert torch.equal(b.tap_features(tap, 0).read_torch(slice(None)).view(torch.int16), want)
    assert verify_store(dst)["bad"] == []


def test_cli_subset_and_its_refusals(tmp_path: Path, source: str) -> None:
    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    run = CliRunner().invoke
    dst = str(tmp_path / "cli.zarr")
    ok = run(app, ["subset", source, dst, "--taps", "sum:2", "--dtype", "int8", "--rows", "val"])
    assert ok.exit_code == 0 and "taps sum:2, int8" in ok.output
    assert open_store(dst).manifest.subset["rows"] == ["val"]
    bad = run(app, ["subset", dst, str(tmp_path / "back.zarr"), "--dtype", "fp16"])
    assert bad.exit_code != 0 and "stays int8" in bad.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    foreign = run(app, ["subset", source, str(tmp_path / "mine")])
    assert foreign.exit_code != 0 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
