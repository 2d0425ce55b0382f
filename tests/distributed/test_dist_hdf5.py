"""HDF5 export/import: a round trip recreates the store file for file, byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from _dist_helpers import CFG, assert_same_store
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import StoreError, open_store

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.stderr  # results; errors on stderr


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bf16_store(make_store) -> str:
    """bf16 (uint16 bits), two layers, a second task: other dtypes and attributes."""
    return make_store("bf16", **{**CFG, "limit": 20, "layers": "1,3", "dtype": "bf16",
                                 "codec": "zstd"})  # fmt: skip


@pytest.mark.parametrize("which", ["reference", "bf16"])
def test_round_trip_is_bit_exact(
    which: str, reference_store: str, bf16_store: str, tmp_path: Path
) -> None:
    src = reference_store if which == "reference" else bf16_store
    h5, dst = tmp_path / "s.h5", tmp_path / "back.zarr"
    summary = json.loads(run("export", src, "--format", "hdf5", str(h5), "--json"))
    assert summary["arrays"] >= 10 and h5.is_file()
    run("import", str(h5), str(dst), "--json")
    a, b = files(Path(src)), files(dst)
    assert a.keys() == b.keys()
    for name in a:  # metadata, attributes and every chunk/shard file, byte for byte
        assert a[name] == b[name], name
    assert_same_store(str(dst), src)


def test_hdf5_file_is_readable_by_plain_h5py(reference_store: str, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    run("export", reference_store, "--format", "hdf5", str(out), "--compression", "gzip")
    store = open_store(reference_store)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["features/block_003"][:], store.features(3)[:])
        assert list(f["index/source"].asstr()[:3]) == list(store.sources[:3])
        task = f[f"tasks/{store.default_task}"]
        assert json.loads(task.attrs["classes"]) == store.classes()
        assert json.loads(f.attrs["losa_cache"])["layout"]["num_images"] == 300


def test_import_to_s3(reference_store: str, s3: dict, tmp_path: Path) -> None:
    out, url = tmp_path / "s.h5", f"s3://{s3['bucket']}/imported.zarr"
    run("export", reference_store, "--format", "hdf5", str(out))
    run("import", str(out), url, "--storage-options", json.dumps(s3["options"]))
    assert_same_store(url, reference_store, s3["options"])


def test_refusals_are_one_clear_line(reference_store: str, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    run("export", reference_store, "--format", "hdf5", str(out))
    assert "--overwrite" in run("export", reference_store, "--format", "hdf5", str(out), code=2)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference_store, copy)
    assert "--overwrite" in run("import", str(out), str(copy), code=2)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    msg = run("import", str(tmp_path / "other.h5"), str(tmp_path / "new.zarr"), code=2)
    assert "not a losa-cache HDF5 export" in msg
    assert "no HDF5 file" in run("import", str(tmp_path / "missing.h5"), "x.zarr", code=2)
    assert "hdf5" in run("export", reference_store, "--format", "csv", "o.csv", code=2)


def test_interrupted_import_never_looks_finished(
    reference_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from losa_cache.store import hdf5

    out, dst = tmp_path / "s.h5", tmp_path / "cut.zarr"
    hdf5.export_hdf5(reference_store, out, progress=False)
    real, calls = hdf5._copy_from_h5, {"n": 0}

    def dies_midway(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        real(*args)

    monkeypatch.setattr(hdf5, "_copy_from_h5", dies_midway)
    full = r"no space left on the disk \(ENOSPC\): free space .*then rerun the same"
    with pytest.raises(StoreError, match=full):
        hdf5.import_hdf5(out, str(dst), progress=False)
    assert "losa_cache" not in zarr.open_group(str(dst), mode="r").attrs
    monkeypatch.setattr(hdf5, "_copy_from_h5", real)
    hdf5.import_hdf5(out, str(dst), progress=False)  # our own remains: redone, no --overwrite
    assert_same_store(str(dst), reference_store)
