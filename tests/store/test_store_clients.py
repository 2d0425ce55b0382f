"""Any Zarr v3 client reads the store: tensorstore, xarray, dask and zarr-python read every
array of fp16, bf16, fp32 and compressed stores equal to what open_store returns."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts
import xarray as xr
import zarr

from losa_cache.store import open_store
from losa_cache.store import schema as S
from losa_cache.store.store import FeatureStore, numpy_view

GROUPS = ("features", "index", "splits", "tasks", "progress")
#: (dtype, codec) of the stores every client must read
KINDS = [("float16", "none"), ("bfloat16", "none"), ("float32", "none"), ("float16", "zstd")]


def expected(store: FeatureStore) -> dict[str, np.ndarray]:
    """Every array of the store as open_store gives it (features as their stored bits)."""
    out = {
        S.feature_name(b): numpy_view(store.features(b).read_torch(slice(None)))
        for b in store.layers
    }
    errors = np.full(store.num_images, "", dtype=object)
    for s in store.skipped():
        errors[s["row"]] = s["error"]
    out |= {
        S.SOURCE: store.sources,
        S.ERROR: errors.astype(str),
        S.STATUS: store.status,
        S.DONE: store.done_shards().astype(np.uint8),
        S.CHECKSUMS: store.group[S.CHECKSUMS][:],
    }
    out |= {S.split_name(k): v for k, v in store.splits.items()}
    out |= {S.task_name(t): store.labels(t) for t in store.tasks}
    return out


def assert_same(name: str, got: np.ndarray, want: np.ndarray) -> None:
    """Bit-exact; text arrays compared as the strings they hold."""
    if name in (S.SOURCE, S.ERROR):
        assert got.dtype == np.uint8 and got.ndim == 2, name
        got = S.decode_text(got)
    elif got.dtype.kind == "f" or got.dtype != want.dtype:  # bits, NaN included
        got, want = got.view(f"u{got.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}")
    np.testing.assert_array_equal(got, want, err_msg=name)


def open_ts(path: str, name: str) -> ts.TensorStore:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/{name}"}}
    return ts.open(spec, read=True).result()


def array_names(path: str) -> list[str]:
    group = zarr.open_group(path, mode="r")
    return sorted(n for n, a in group.members(max_depth=None) if isinstance(a, zarr.Array))


@pytest.mark.parametrize(("dtype", "codec"), KINDS)
def test_every_client_reads_every_array_as_open_store(kind_store, dtype: str, codec: str) -> None:
    path = kind_store(dtype, codec)
    store = open_store(path)
    want = expected(store)
    names = array_names(path)
    assert set(names) == set(want)
    for name in names:
        meta = json.loads((Path(path) / name / "zarr.json").read_text())
        assert meta["dimension_names"] and all(meta["dimension_names"]), name
        assert meta["codecs"][-1]["name"] in ("crc32c", "sharding_indexed"), name
        t = open_ts(path, name)
        assert list(t.domain.labels) == meta["dimension_names"], name
        for got in (
            t.read().result(),
            da.from_zarr(path, component=name).compute(),
            zarr.open_array(f"{path}/{name}", mode="r")[:],
        ):
            assert_same(name, np.asarray(got), want[name])
    for group in GROUPS:  # xarray: every group is a Dataset
        ds = xr.open_zarr(path, group=group, consolidated=False)
        for var in ds.data_vars:
            assert_same(f"{group}/{var}", ds[var].values, want[f"{group}/{var}"])
    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    assert set(tree.children) == set(GROUPS)
    assert tree["features"].dataset.sizes == {
        "image": store.num_images,
        "token": store.layout.tokens,
        "channel": store.layout.dim,
    }


def test_bf16_arrays_say_so_and_view_exactly(kind_store) -> None:
    """bf16 features are uint16 bits marked on the array; viewing them (ml_dtypes, as
    tensorstore and jax do) gives open_store's values."""
    path = kind_store("bfloat16", "none")
    store = open_store(path)
    for block in store.layers:
        name = S.feature_name(block)
        attrs = zarr.open_array(f"{path}/{name}", mode="r").attrs
        assert attrs["dtype"] == "bfloat16" and "uint16 bit patterns" in attrs["stored_as"]
        bits = open_ts(path, name).read().result()
        assert bits.dtype == np.uint16
        np.testing.assert_array_equal(
            bits.view(ml_dtypes.bfloat16).astype(np.float32), store.features(block)[:]
        )
        numpy_only = (bits.astype(np.uint32) << 16).view(np.float32)  # the README recipe
        np.testing.assert_array_equal(numpy_only, store.features(block)[:])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_unfinished_rows_read_as_nan_in_other_clients(kind_store, copy_store, dtype: str) -> None:
    """Rows extraction never wrote cannot pass for data: NaN (bf16: its NaN bits)."""
    path = copy_store(kind_store(dtype, "none"))
    zarr.open_array(str(path / S.DONE), mode="r+")[1] = 0
    name = S.feature_name(3)
    (path / name / "c" / "1" / "0" / "0").unlink()
    sr = open_store(path).layout.shard_rows
    for got in (
        open_ts(str(path), name).read().result(),
        xr.open_zarr(path, group="features", consolidated=False)["block_003"].values,
    ):
        got = np.asarray(got)
        if dtype == "bfloat16":
            got = got.view(ml_dtypes.bfloat16).astype(np.float32)
        assert np.isnan(got[sr : 2 * sr]).all() and not np.isnan(got[:sr]).any()


def test_text_keeps_long_paths_and_cuts_long_errors_at_a_character() -> None:
    """Sources are as wide as the longest (nothing is cut); skip reasons are cut at
    ERROR_BYTES without splitting a UTF-8 character."""
    sources = ["a", "/données/" + "é" * 3000 + ".jpg", ""]
    width = S.text_width(sources)
    assert width == len(sources[1].encode())
    assert list(S.decode_text(S.encode_text(sources, width))) == sources
    long_error = "x" + "€" * 1000  # 3001 bytes; a cut at 1024 would split a euro sign
    (cut,) = S.decode_text(S.encode_text([long_error], S.ERROR_BYTES))
    assert long_error.startswith(cut) and len(cut.encode()) <= S.ERROR_BYTES
    assert len(cut.encode()) > S.ERROR_BYTES - 3
