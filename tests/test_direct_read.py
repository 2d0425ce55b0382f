"""Direct shard-file reads (store/direct.py) are bit-exact with zarr, or not used at all."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec

from losa_cache.store import open_store
from losa_cache.store.direct import DIRECT_ENV, ShardIndexError, direct_reader
from losa_cache.store.store import FeatureArray
from losa_cache.train import StoreReader, labelled_rows

N, T, D, CHUNK, SHARD = 45, 3, 5, 4, 12  # 4 shards, the last partial; a partial last chunk


def make_array(path: Path, dtype: str = "float16", fill: float = 0.0, **kw) -> zarr.Array:
    """A (N, T, D) array sharded like a feature store (chunks and shards along rows only)."""
    kw.setdefault("compressors", None)
    return zarr.create_array(
        str(path),
        shape=(N, T, D),
        dtype=dtype,
        chunks=(CHUNK, T, D),
        shards=(SHARD, T, D),
        fill_value=fill,
        **kw,
    )


def values(dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "uint16":  # bf16 bits, NaN/inf patterns included
        return rng.integers(0, 2**16, (N, T, D), dtype=np.uint16)
    return rng.standard_normal((N, T, D)).astype(dtype)


def direct_read(arr: zarr.Array, lo: int, hi: int) -> np.ndarray:
    reader = direct_reader(arr)
    assert reader is not None
    out = np.full((hi - lo, T, D), 7, dtype=arr.dtype)  # garbage: every byte must be written
    reader.read_into(lo, hi, out)
    return out


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


@pytest.mark.parametrize("dtype", ["float16", "uint16", "float32"])
def test_every_range_is_bit_exact_with_zarr(tmp_path: Path, dtype: str) -> None:
    arr = make_array(tmp_path / "a.zarr", dtype)
    arr[:] = values(dtype)
    full = bits(arr[:])  # zarr's read
    np.testing.assert_array_equal(full, bits(values(dtype)))
    for lo, hi in itertools.combinations(range(N + 1), 2):
        np.testing.assert_array_equal(bits(direct_read(arr, lo, hi)), full[lo:hi])


def test_empty_chunks_and_missing_shards_read_the_fill_value(tmp_path: Path) -> None:
    arr = make_array(tmp_path / "a.zarr", "float32", fill=1.5)
    data = values("float32")
    data[4:8] = 1.5  # one whole chunk of fill: zarr leaves it out of the shard (empty)
    arr[:SHARD] = data[:SHARD]
    arr[2 * SHARD :] = data[2 * SHARD :]  # shard 1 never written: no file
    assert not (tmp_path / "a.zarr" / "c" / "1" / "0" / "0").exists()
    fd = os.open(tmp_path / "a.zarr/c/0/0/0", os.O_RDONLY)
    try:
        assert (direct_reader(arr)._index(0, fd)[1] == 2**64 - 1).all()  # chunk 1: empty
    finally:
        os.close(fd)
    np.testing.assert_array_equal(direct_read(arr, 0, N), arr[:])
    np.testing.assert_array_equal(direct_read(arr, 0, N)[SHARD : 2 * SHARD], 1.5)
    direct_reader(arr).advise(0, N)  # read-ahead hints skip empty chunks and missing files


def test_read_into_torch_tensors_and_byte_counts(tmp_path: Path) -> None:
    arr = make_array(tmp_path / "a.zarr", "uint16")
    arr[: SHARD * 2] = values("uint16")[: SHARD * 2]
    feats = FeatureArray(arr, "bfloat16")
    assert feats.direct is not None
    out = torch.empty((N - 3, T, D), dtype=torch.bfloat16)
    got = feats.read_into(3, N, out)
    assert got == (2 * SHARD - 3) * T * D * 2  # unwritten rows cost no reads
    assert torch.equal(out.view(torch.int16), feats.read_torch(slice(3, N)).view(torch.int16))
    # a non-contiguous destination or another dtype goes through zarr, same values
    wide = torch.zeros((N, T, 2 * D), dtype=torch.bfloat16)
    feats.read_into(0, N, wide[:, :, :D])
    expect = feats.read_torch(slice(None)).view(torch.int16)
    assert torch.equal(wide[:, :, :D].contiguous().view(torch.int16), expect)


def test_concurrent_readers_agree(tmp_path: Path) -> None:
    arr = make_array(tmp_path / "a.zarr", "float32")
    arr[:] = values("float32")
    reader = direct_reader(arr)
    outs = [np.empty((N, T, D), np.float32) for _ in range(8)]
    threads = [threading.Thread(target=reader.read_into, args=(0, N, o)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in outs:
        np.testing.assert_array_equal(o, arr[:])


def test_a_rewritten_shard_is_read_anew(tmp_path: Path) -> None:
    arr = make_array(tmp_path / "a.zarr", "float32")
    arr[:] = values("float32", 0)
    reader = direct_reader(arr)
    out = np.empty((N, T, D), np.float32)
    reader.read_into(0, N, out)
    arr[:SHARD] = values("float32", 1)[:SHARD]  # zarr writes a new file (new inode)
    reader.read_into(0, N, out)
    np.testing.assert_array_equal(out, arr[:])


def test_damaged_shards_raise(tmp_path: Path) -> None:
    arr = make_array(tmp_path / "a.zarr", "float32")
    arr[:] = values("float32")
    shard = tmp_path / "a.zarr" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index: checksum mismatch
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardIndexError, match="checksum"):
        direct_read(arr, 0, 4)
    shard.write_bytes(b"\0" * 20)  # shorter than an index
    with pytest.raises(ShardIndexError, match="too short"):
        direct_read(arr, 0, 4)


def test_other_layouts_stay_on_zarr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lz4 = make_array(tmp_path / "lz4.zarr", compressors=[BloscCodec(cname="lz4")])
    plain = zarr.create_array(
        str(tmp_path / "plain.zarr"),
        shape=(N, T, D),
        dtype="float16",
        chunks=(CHUNK, T, D),
        compressors=None,
    )
    split = zarr.create_array(
        str(tmp_path / "split.zarr"),
        shape=(N, T, D),
        dtype="float16",
        chunks=(CHUNK, T, 1),
        shards=(SHARD, T, D),
        compressors=None,
    )
    memory = zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=(N, T, D),
        dtype="float16",
        chunks=(CHUNK, T, D),
        shards=(SHARD, T, D),
        compressors=None,
    )
    for arr in (lz4, plain, split, memory):
        assert direct_reader(arr) is None
        arr[:] = values("float16")
        feats = FeatureArray(arr, "float16")
        out = torch.empty((N - 5, T, D), dtype=torch.float16)
        feats.read_into(5, N, out)
        assert torch.equal(out, torch.from_numpy(arr[5:]))
        feats.advise(0, N)  # a no-op off the direct path
    monkeypatch.setenv(DIRECT_ENV, "0")
    assert direct_reader(make_array(tmp_path / "off.zarr")) is None


def test_store_features_read_directly(micro_store: str) -> None:
    store = open_store(micro_store)
    for layer in store.layers:
        feats = store.features(layer)
        assert feats.direct is not None  # codec none: the default
        out = torch.empty((feats.shape[0] - 3, *feats.shape[1:]), dtype=torch.float32)
        feats.read_into(3, feats.shape[0], out)
        assert torch.equal(out, feats.read_torch(slice(3, None)))
        feats.advise(0, feats.shape[0])


@pytest.mark.parametrize("split", ["train", "sparse"])
def test_reader_batches_match_the_zarr_path(
    micro_store: str, split: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed batches (whole runs and sparse rows alike) equal zarr's, byte for byte."""
    store = open_store(micro_store)
    rows, labels = labelled_rows(store, "train", None)
    if split == "sparse":  # gaps inside chunks: the partial-run paths
        keep = np.isin(rows % 16, [0, 1, 2, 5, 9, 10, 15])
        rows, labels = rows[keep], labels[keep]

    def take() -> list:
        with StoreReader(
            store, rows, labels, store.layers[:2], 10, seed=3, buffer_rows=20, workers=2
        ) as reader:
            stream = reader.batches()
            out = list(itertools.islice(stream, 9))
            stream.close()
            assert reader.bytes_read > 0
            return out

    direct = take()
    monkeypatch.setenv(DIRECT_ENV, "0")
    store = open_store(micro_store)
    assert store.features(store.layers[0]).direct is None
    for a, b in zip(direct, take(), strict=True):
        assert torch.equal(a.rows, b.rows) and torch.equal(a.labels, b.labels)
        for layer in a.features:
            assert torch.equal(a.features[layer], b.features[layer])


@pytest.mark.parametrize("dtype", ["float16", "uint16", "float32"])
def test_scatter_rows_puts_every_row_in_its_slot(tmp_path: Path, dtype: str) -> None:
    """Any rows (any order, across shards, empty chunks, a missing shard) land in their
    slots bit-exactly; slots not asked for are left alone; byte counts are the files'."""
    arr = make_array(tmp_path / "a.zarr", dtype, fill=1.5 if dtype != "uint16" else 3)
    data = values(dtype)
    arr[:SHARD] = data[:SHARD]
    arr[2 * SHARD :] = data[2 * SHARD :]  # shard 1 never written: the fill value
    full = bits(arr[:])
    reader = direct_reader(arr)
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, N):
        rows = rng.permutation(N)[:n]
        out = np.full((N + 5, T, D), 7, dtype=arr.dtype)
        slots = rng.permutation(N + 5)[:n]
        got = reader.scatter_rows(rows, out, slots)
        np.testing.assert_array_equal(bits(out[slots]), full[rows])
        untouched = np.setdiff1d(np.arange(N + 5), slots)
        assert (bits(out[untouched]) == bits(np.array(7, dtype=arr.dtype))).all()
        written = ((rows < SHARD) | (rows >= 2 * SHARD)).sum()
        assert got == written * reader.row_bytes


def test_scatter_rows_off_the_direct_path_gives_the_same(tmp_path: Path) -> None:
    lz4 = make_array(tmp_path / "lz4.zarr", "float32", compressors=[BloscCodec(cname="lz4")])
    raw = make_array(tmp_path / "raw.zarr", "float32")
    lz4[:] = raw[:] = values("float32")
    rows, slots = np.array([9, 3, 4, 5, 30, 2]), np.array([0, 5, 2, 3, 1, 4])
    outs = []
    for arr in (lz4, raw):
        feats = FeatureArray(arr, "float32")
        out = torch.zeros((6, T, D))
        assert feats.scatter_rows(rows, out, slots) > 0
        outs.append(out)
    assert FeatureArray(lz4, "float32").direct is None
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[1][torch.from_numpy(slots)], torch.from_numpy(raw[:][rows]))


def test_short_reads_are_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A preadv may return fewer bytes than asked (signals, some file systems): the row it
    stopped in is finished and the rest read on."""
    arr = make_array(tmp_path / "a.zarr", "float32")
    arr[:] = values("float32")
    real = os.preadv

    def short(fd: int, buffers: list, offset: int) -> int:
        first = memoryview(buffers[0]).cast("B")
        return real(fd, [first[: max(1, len(first) // 3)]], offset)

    monkeypatch.setattr(os, "preadv", short)
    reader = direct_reader(arr)
    out = np.zeros((N, T, D), np.float32)
    reader.scatter_rows(np.arange(N), out, np.arange(N)[::-1])
    np.testing.assert_array_equal(out[::-1], arr[:])
    np.testing.assert_array_equal(direct_read(arr, 3, 30), arr[3:30])


def test_scatter_rows_refuses_bad_slots(tmp_path: Path) -> None:
    arr = make_array(tmp_path / "a.zarr", "float32")
    arr[:] = values("float32")
    reader = direct_reader(arr)
    out = np.zeros((4, T, D), np.float32)
    with pytest.raises(IndexError, match="slots out of range"):
        reader.scatter_rows(np.arange(4), out, np.array([0, 1, 2, 4]))
    with pytest.raises(IndexError, match="rows out of range"):
        reader.scatter_rows(np.array([0, 1, 2, N]), out, np.arange(4))
    with pytest.raises(ValueError, match="3 slots for 4 rows"):
        reader.scatter_rows(np.arange(4), out, np.arange(3))
