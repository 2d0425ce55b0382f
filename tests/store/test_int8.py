"""int8 stores: codes + one fp16 scale per (image, token) row, read back as q * scale."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from losa_cache.store import open_store
from losa_cache.store import schema as S
from losa_cache.store.hdf5 import export_hdf5, import_hdf5
from losa_cache.store.quant import dequantize, error_bound, quantize
from losa_cache.store.store import StoreIncompleteError
from losa_cache.store.writer import verify_store


@pytest.fixture(scope="module")
def extract_store(tiny_extract: Callable[..., str]) -> Callable[..., str]:
    """This module's stores: :func:`tiny_extract` with layers="0,3", taps="blocks,embed,sum:2"."""
    return functools.partial(tiny_extract, layers="0,3", taps="blocks,embed,sum:2")


def test_quantize_round_trip_and_zero_rows() -> None:
    x = torch.randn(5, 7, 16) * torch.logspace(-3, 3, 7)[None, :, None]
    x[1, 2] = 0.0
    q, s = quantize(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (5, 7)
    assert int(q.abs().max()) <= 127 and s[1, 2] == 0 and (q[1, 2] == 0).all()
    values = dequantize(q, s)
    assert torch.equal(values, q.float() * s.float()[..., None])
    np.testing.assert_array_equal(dequantize(q.numpy(), s.numpy()), values.numpy())
    err = (values - x).abs().amax(-1)
    assert (err <= error_bound(x)).all() and values[1, 2].abs().max() == 0


def test_int8_store_reads_dequantized_within_bound(
    extract_store: Callable[..., str], tmp_path: Path
) -> None:
    full = open_store(extract_store(tmp_path / "f.zarr", dtype="fp32"))
    path = extract_store(tmp_path / "q.zarr", dtype="int8")
    s = open_store(path)
    assert s.dtype == "int8" and s.taps == ["blocks", "embed", "sum:2"]
    for tap, block in (("blocks", 0), ("blocks", 3), ("embed", None), ("sum:2", None)):
        arr, ref = s.tap_features(tap, block), full.tap_features(tap, block)[:]
        codes, scales = arr.raw(slice(None))
        want_q, want_s = quantize(torch.from_numpy(ref))
        np.testing.assert_array_equal(codes, want_q.numpy())  # same rows, same codes
        np.testing.assert_array_equal(scales, want_s.numpy())
        values = arr[:]
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, codes.astype(np.float32) * scales[..., None])
        bound = error_bound(torch.from_numpy(ref)).numpy()
        assert (np.abs(values - ref).max(-1) <= bound).all()
        np.testing.assert_array_equal(arr[2, 1:3], values[2, 1:3])
        assert s.group[S.tap_array(tap, block)].attrs["dtype"] == "int8"
    assert verify_store(path)["bad"] == []


def test_int8_unfinished_rows_and_hdf5_round_trip(
    extract_store: Callable[..., str], tmp_path: Path
) -> None:
    path = extract_store(tmp_path / "q.zarr", dtype="int8")
    export_hdf5(path, tmp_path / "q.h5", progress=False)
    back = str(tmp_path / "back.zarr")
    import_hdf5(tmp_path / "q.h5", back, progress=False)
    a, b = open_store(path), open_store(back)
    assert b.taps == a.taps
    for tap in a.taps:
        blocks = a.layers if tap == "blocks" else [None]
        for block in blocks:
            np.testing.assert_array_equal(
                a.tap_features(tap, block)[:], b.tap_features(tap, block)[:]
            )
    import zarr

    g = zarr.open_group(back, mode="r+")
    g[S.DONE][0] = 0
    with pytest.raises(StoreIncompleteError):
        open_store(back).tap_features("embed")[:]
    nan = open_store(back, allow_incomplete=True).tap_features("embed")[:4]
    assert np.isnan(nan).all()


def test_damaged_int8_scales_are_found(extract_store: Callable[..., str], tmp_path: Path) -> None:
    path = extract_store(tmp_path / "q.zarr", dtype="int8")
    shard = tmp_path / "q.zarr" / "embed" / "z0_scale" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[3] ^= 0x01
    shard.write_bytes(bytes(data))
    bad = verify_store(path)["bad"]
    assert [(b["shard"], b["array"]) for b in bad] == [(0, "embed/z0_scale")]
    from losa_cache.store.store import StoreIntegrityError

    with pytest.raises(StoreIntegrityError):
        open_store(path).tap_features("embed")[:4]
