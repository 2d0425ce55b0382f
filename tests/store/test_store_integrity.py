"""Every read is checked: damaged or missing chunks stop training, sweeps, eval and plain
reads with an error naming the shard, the file and the fix; unfinished rows are refused
unless the caller opts in; schema-1 stores (no checksums) still open."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner
from zarr.codecs import Crc32cCodec

from losa_cache.store import (
    StoreIncompleteError,
    StoreIntegrityError,
    open_store,
)
from losa_cache.store import schema as S
from losa_cache.store.direct import DIRECT_ENV, direct_reader
from losa_cache.store.store import UnverifiedStoreWarning
from losa_cache.store.writer import checksum
from losa_cache.train import StoreReader
from losa_cache.train.feed import FeatureCache

N, T, D, CHUNK, SHARD = 45, 3, 5, 4, 12  # 4 shards, the last partial; a partial last chunk
LAYER = 3


def checked_array(path: Path, dtype: str, fill: float = 0.0) -> zarr.Array:
    """A (N, T, D) array sharded like a feature store, every chunk ending in a crc32c."""
    return zarr.create_array(
        str(path),
        shape=(N, T, D),
        dtype=dtype,
        chunks=(CHUNK, T, D),
        shards=(SHARD, T, D),
        fill_value=fill,
        compressors=[Crc32cCodec()],
    )


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def shard_file(store: Path, shard: int, layer: int = LAYER) -> Path:
    return store / S.feature_name(layer) / "c" / str(shard) / "0" / "0"


def flip(path: Path, offset: int = 10) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------- direct, checked


@pytest.mark.parametrize("dtype", ["float16", "uint16", "float32"])
def test_checked_direct_reads_are_bit_exact_with_zarr(
    tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks with a crc32c are read whole and checked: any rows (repeats, any order, an
    empty chunk, a missing shard, the padded last chunk) land in their slots bit-exactly,
    slots not asked for are untouched, and the bytes counted are the whole chunks' rows."""
    arr = checked_array(tmp_path / "a.zarr", dtype, fill=3)
    rng = np.random.default_rng(0)
    data = (
        rng.integers(0, 2**16, (N, T, D), dtype=np.uint16)
        if dtype == "uint16"
        else rng.standard_normal((N, T, D)).astype(dtype)
    )
    data[4:8] = 3  # a whole chunk of fill: left out of the shard
    arr[:SHARD] = data[:SHARD]
    arr[2 * SHARD :] = data[2 * SHARD :]  # shard 1 never written
    full = bits(arr[:])
    reader = direct_reader(arr)
    assert reader is not None and reader.crc and reader.verify
    real = os.preadv
    short = [False]

    def maybe_short(fd: int, buffers: list, offset: int) -> int:  # short reads finish too
        if short[0]:
            first = memoryview(buffers[0]).cast("B")
            return real(fd, [first[: max(1, len(first) // 3)]], offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", maybe_short)
    for n, short[0] in itertools.product((1, 5, N, 2 * N), (False, True)):
        rows = rng.integers(0, N, n)  # repeats when n > 5 or so
        out = np.full((2 * N + 3, T, D), 7, dtype=arr.dtype)
        slots = rng.permutation(2 * N + 3)[:n]
        got = reader.scatter_rows(rows, out, slots)
        np.testing.assert_array_equal(bits(out[slots]), full[rows])
        untouched = np.setdiff1d(np.arange(2 * N + 3), slots)
        assert (bits(out[untouched]) == bits(np.array(7, dtype=arr.dtype))).all()
        chunks = {r // CHUNK for r in rows.tolist() if not SHARD <= r < 2 * SHARD} - {1}
        assert got == len(chunks) * CHUNK * T * D * arr.dtype.itemsize  # whole chunks


def test_a_flipped_byte_fails_the_checked_direct_read(tmp_path: Path) -> None:
    arr = checked_array(tmp_path / "a.zarr", "float32")
    arr[:] = np.random.default_rng(1).standard_normal((N, T, D)).astype("float32")
    flip(tmp_path / "a.zarr" / "c" / "1" / "0" / "0", offset=CHUNK * T * D * 4 + 4 + 3)
    reader = direct_reader(arr)
    out = np.empty((N, T, D), np.float32)
    reader.scatter_rows(np.arange(SHARD + CHUNK), out, np.arange(SHARD + CHUNK))  # chunk 0
    with pytest.raises(
        StoreIntegrityError,
        match=r"shard 1 .*c/1/0/0.*chunk 1 fails its "
        r"crc32c.*verify .* --repair",
    ):
        reader.scatter_rows(np.array([SHARD + CHUNK + 1]), out, np.array([0]))


# ---------------------------------------------------------------------- stores


@pytest.fixture(params=["direct", "zarr", "zstd"])
def damaged_store(
    request: pytest.FixtureRequest, kind_store, copy_store, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A copy of a store whose shard 1 of block 3 has a flipped byte in its first chunk:
    read straight from the files, through zarr, or compressed (zarr)."""
    if request.param == "zarr":
        monkeypatch.setenv(DIRECT_ENV, "0")
    store = copy_store(kind_store("float16", "zstd" if request.param == "zstd" else "none"))
    flip(shard_file(store, 1))
    return store


def test_damage_stops_plain_reads_naming_shard_file_and_fix(damaged_store: Path) -> None:
    store = open_store(damaged_store)
    feats = store.features(LAYER)
    sr = store.layout.shard_rows
    np.testing.assert_array_equal(
        feats[:sr], zarr.open_array(str(damaged_store / S.feature_name(LAYER)))[:sr]
    )  # shard 0 is fine
    with pytest.raises(StoreIntegrityError) as err:
        feats[sr : 2 * sr]
    msg = str(err.value)
    assert "shard 1 of features/block_003" in msg and str(shard_file(damaged_store, 1)) in msg
    assert f"losa-cache verify {damaged_store} --repair" in msg and "\n" not in msg
    with pytest.raises(StoreIntegrityError):
        store.features(LAYER).read_torch(np.array([sr + 1, 0]))


def test_damage_stops_the_training_reader(damaged_store: Path) -> None:
    """Training and sweeps read through StoreReader: streamed and cached alike stop."""
    store = open_store(damaged_store)
    rows = np.arange(store.num_images)
    labels = np.zeros(len(rows), dtype=np.int64)
    match = "shard 1 of features/block_003"
    with (
        pytest.raises(StoreIntegrityError, match=match),
        StoreReader(store, rows, labels, [1, LAYER], 4, workers=2) as reader,
    ):
        for _ in itertools.islice(reader.batches(), 20):
            pass
    # the memory cache is filled through the same reader
    with (
        pytest.raises(StoreIntegrityError, match=match),
        StoreReader(store, rows, labels, [1, LAYER], 4, workers=2) as reader,
    ):
        FeatureCache(reader, rows, [1, LAYER], torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_stop_at_damage_with_one_line(
    kind_store, copy_store, tmp_path: Path, command: str
) -> None:
    from losa_cache.cli.main import app

    path = copy_store(kind_store("float16", "none"))
    flip(shard_file(path, 0))
    args = [
        command,
        "--store",
        str(path),
        "--method",
        "losa",
        "--rank",
        "2",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--val-split",
        "none",
        "--test-split",
        "none",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "is damaged: shard 0 of features/block_003" in res.output
    assert f"losa-cache verify {path} --repair" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("path", ["direct", "zarr"])
@pytest.mark.parametrize("how", ["deleted", "emptied", "truncated"])
def test_missing_or_cut_shard_files_of_done_shards_raise(
    kind_store, copy_store, monkeypatch: pytest.MonkeyPatch, path: str, how: str
) -> None:
    """A deleted shard file used to read as zeros: a done shard without its bytes is damage."""
    if path == "zarr":
        monkeypatch.setenv(DIRECT_ENV, "0")
    store_path = copy_store(kind_store("float16", "none"))
    victim = shard_file(store_path, 2)
    if how == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[: 0 if how == "emptied" else 50])
    store = open_store(store_path)
    sr = store.layout.shard_rows
    with pytest.raises(StoreIntegrityError, match=r"shard 2 of features/block_003 .*verify"):
        store.features(LAYER)[2 * sr + 1]


def test_unfinished_rows_raise_unless_allowed(kind_store, copy_store) -> None:
    """An interrupted extraction (shard 1: no done marker, no files) reads as an error that
    counts the rows and names the fix; allow_incomplete reads them as NaN."""
    path = copy_store(kind_store("float16", "none"))
    zarr.open_array(str(path / S.DONE), mode="r+")[1] = 0
    for layer in (1, LAYER):
        shard_file(path, 1, layer).unlink()
    store = open_store(path)
    sr = store.layout.shard_rows
    rows = np.array([0, sr, sr + 2, 3 * sr])
    with pytest.raises(
        StoreIncompleteError,
        match=r"2 of the 4 rows .*\(4/5 shards done\).*"
        r"losa-cache extract.*allow_incomplete",
    ):
        store.features(LAYER)[rows]
    with pytest.raises(StoreIncompleteError):
        store.features(1)[:]
    expect = zarr.open_array(str(path / S.feature_name(LAYER)))[:]
    got = open_store(path, allow_incomplete=True).features(LAYER)[rows]
    assert np.isnan(got[1:3]).all() and not np.isnan(got[[0, 3]]).any()
    np.testing.assert_array_equal(got[[0, 3]], expect[rows[[0, 3]]])


def test_a_shard_finished_meanwhile_is_read(kind_store, copy_store) -> None:
    """Done markers are looked at again before refusing: a store being extracted is read
    as far as it got."""
    path = copy_store(kind_store("float16", "none"))
    done = zarr.open_array(str(path / S.DONE), mode="r+")
    done[1] = 0
    feats = open_store(path).features(LAYER)
    done[1] = 1
    sr = feats.shard_rows
    assert not np.isnan(feats[sr : 2 * sr]).any()


# ---------------------------------------------------------------------- eval


def _adapter(store_path: str, folder: Path) -> Path:
    from losa_cache.adapter import save_adapter
    from losa_cache.side import SideConfig, create_side

    store = open_store(store_path)
    config = SideConfig(
        num_layers=4, dim=32, tokens=17, num_classes=len(store.classes()), rank=4, layers=[1, 3]
    )
    meta = {
        "fingerprint": store.fingerprint,
        "classes": store.classes(),
        "task": store.default_task,
    }
    return save_adapter(folder, create_side(config), config, meta)


def test_eval_refuses_an_incomplete_store_and_says_what_it_scored(
    kind_store, copy_store, tmp_path: Path
) -> None:
    from losa_cache.cli.main import app

    path = copy_store(kind_store("float16", "none"))
    adapter = _adapter(str(path), tmp_path / "adapter")
    test_rows = open_store(path).split_rows("test")
    shard = int(test_rows[0]) // 6
    zarr.open_array(str(path / S.DONE), mode="r+")[shard] = 0
    runner = CliRunner()
    args = ["eval", "--adapter", str(adapter), "--store", str(path), "--split", "test"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "incomplete" in res.output
    assert "--allow-incomplete" in res.output
    res = runner.invoke(app, [*args, "--allow-incomplete", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{") :])
    in_shard = int((test_rows // 6 == shard).sum())
    assert result["count"] == len(test_rows) - in_shard and not result["complete"]
    assert result["scored_fraction"] == pytest.approx(result["count"] / len(test_rows))
    assert f"scored {result['count']} of {len(test_rows)} rows" in res.output


@pytest.mark.slow
def test_eval_of_a_damaged_store_is_one_clean_line(kind_store, copy_store, tmp_path: Path) -> None:
    """Through zarr (compressed), as a user runs it: no asyncio "Task was destroyed"."""
    path = copy_store(kind_store("float16", "zstd"))
    adapter = _adapter(str(path), tmp_path / "adapter")
    for shard in range(5):
        flip(shard_file(path, shard))
    cmd = [
        str(Path(sys.executable).with_name("losa-cache")),
        "eval",
        "--adapter",
        str(adapter),
        "--store",
        str(path),
        "--split",
        "test",
        "--batch-size",
        "64",
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "is damaged: shard" in lines[0], res.stderr
    assert "verify" in lines[0] and "Task was destroyed" not in res.stderr


# ---------------------------------------------------------------------- schema 1


def schema1_store(src: str, dst: Path) -> Path:
    """The store at ``src`` rewritten in schema 1's layout (string index arrays, zeros as
    fill, no chunk checksums, no dimension names), as main wrote them before schema 2."""
    old = open_store(src)
    group = zarr.open_group(str(dst), mode="w")
    lay = old.layout
    for layer in lay.layers:
        arr = group.create_array(
            S.feature_name(layer),
            shape=(lay.num_images, lay.tokens, lay.dim),
            dtype=S.DTYPES[lay.dtype][0],
            chunks=(lay.chunk_rows, lay.tokens, lay.dim),
            shards=(lay.shard_rows, lay.tokens, lay.dim),
            compressors=None,
            fill_value=0,
        )
        arr[:] = old.group[S.feature_name(layer)][:]
    n = lay.num_images
    for name, values in ((S.SOURCE, old.sources), (S.ERROR, np.full(n, "", dtype=str))):
        group.create_array(name, shape=(n,), dtype=str, chunks=(n,), fill_value="")[:] = values
    for name in (
        S.STATUS,
        S.DONE,
        S.CHECKSUMS,
        *(S.split_name(s) for s in old.splits),
        *(S.task_name(t) for t in old.tasks),
    ):
        a = old.group[name]
        new = group.create_array(
            name,
            shape=a.shape,
            dtype=a.dtype,
            chunks=a.chunks,
            fill_value=a.fill_value,
            compressors=None,
        )
        new[:] = a[:]
        new.attrs.update(a.attrs.asdict())
    sums = group[S.CHECKSUMS]
    for shard in range(lay.num_shards):  # errors hashed as strings, as schema 1 did
        lo, hi = lay.shard_range(shard)
        sums[shard, -1] = checksum(group[S.ERROR][lo:hi])
    manifest = old.manifest.to_dict() | {"schema_version": 1}
    del manifest["store_id"]  # recorded since schema 2 stores got array ids
    group.attrs[S.ROOT_ATTR] = manifest
    return dst


def test_schema1_stores_still_open_unverified(kind_store, tmp_path: Path) -> None:
    from losa_cache.store.info import store_info
    from losa_cache.store.writer import ShardWriter, verify_shards

    src = kind_store("float16", "none")
    path = schema1_store(src, tmp_path / "old.zarr")
    new, old = open_store(src), open_store(path)
    assert old.manifest.schema_version == 1 and not old.verified_reads
    with pytest.warns(UnverifiedStoreWarning, match="without per-chunk checksums"):
        feats = old.features(LAYER)
    assert feats.direct is not None and not feats.direct.crc
    np.testing.assert_array_equal(feats[:], new.features(LAYER)[:])
    assert list(old.sources) == list(new.sources) and old.skipped() == []
    info = store_info(str(path))
    assert not info["verified_reads"] and "without per-chunk checksums" in info["integrity"]
    # verify checks it, and resume writes a shard in the old form: checksums still hold
    errors = np.full(6, "", dtype=str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedStoreWarning)
        assert verify_shards(open_store(path)) == []
        lay, g = old.layout, zarr.open_group(str(path), mode="r+")
        feats0 = {S.feature_name(b): old.features(b)[:6].astype(np.float16) for b in lay.layers}
        ShardWriter(g, lay).write(0, feats0, old.status[:6], errors)
        assert verify_shards(open_store(path)) == []


def test_info_explains_stored_versus_logical_bytes(kind_store) -> None:
    """An uncompressed store is not "compressed 0.79x": padding and overhead are named."""
    from losa_cache.store.info import store_info

    info = store_info(kind_store("float16", "none"))
    store = open_store(kind_store("float16", "none"))
    lay = store.layout
    assert info["bytes_logical"] == lay.num_images * lay.row_bytes * len(lay.layers)
    assert info["bytes_padding"] == 1 * lay.row_bytes * len(lay.layers)  # 27 rows, chunks of 2
    assert info["compression_ratio"] is None and info["verified_reads"]
    assert info["bytes_stored"] == (
        info["bytes_logical"]
        + info["bytes_padding"]
        + info["bytes_index_and_checksums"]
        + info["bytes_metadata"]
    )
    assert "padding" in info["size_note"] and "checksums" in info["size_note"]
    zstd = store_info(kind_store("float16", "zstd"))
    assert zstd["compression_ratio"] > 0 and "codec zstd" in zstd["size_note"]
