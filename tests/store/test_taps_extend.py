"""``extract --extend``: taps added to a finished store end as if extracted at once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from losa_cache.store import open_store
from losa_cache.store.store import StoreError
from losa_cache.store.writer import ShardWriter, verify_store

ALL = "blocks,embed,attn,sum:2,4"


@pytest.fixture(scope="module")
def extract_store(tiny_extract: Callable[..., str]) -> Callable[..., str]:
    """This module's stores: :func:`tiny_extract` with layers="1,3"."""
    return functools.partial(tiny_extract, layers="1,3")


def assert_same_store(a: str, b: str) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.taps == sb.taps and sa.layers == sb.layers
    assert sa.manifest.identity == sb.manifest.identity
    for tap in sa.taps:
        blocks = sa.layers if tap in ("blocks", "attn", "mlp") else [None]
        for block in blocks:
            np.testing.assert_array_equal(
                sa.tap_features(tap, block)[:], sb.tap_features(tap, block)[:]
            )
    assert verify_store(a)["bad"] == [] and verify_store(b)["bad"] == []


def test_extend_ends_identical_to_all_at_once(
    extract_store: Callable[..., str], tmp_path: Path
) -> None:
    once = extract_store(tmp_path / "once.zarr", taps=ALL)
    path = extract_store(tmp_path / "ext.zarr", taps="blocks")
    before = open_store(path).features(1)[:]
    extract_store(tmp_path / "ext.zarr", taps="embed,attn,sum:2,4", extend=True)
    assert_same_store(path, once)
    np.testing.assert_array_equal(open_store(path).features(1)[:], before)
    extract_store(tmp_path / "ext.zarr", taps=ALL)  # the whole set now resumes as a no-op


def test_killed_extend_resumes(
    extract_store: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    once = extract_store(tmp_path / "once.zarr", taps="blocks,mlp,sum:4")
    path = extract_store(tmp_path / "ext.zarr", taps="blocks")
    real, calls = ShardWriter.write, []

    def dies_on_second(self, shard, *args, **kwargs):
        calls.append(shard)
        if len(calls) == 2:
            raise OSError("killed")
        return real(self, shard, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "write", dies_on_second)
    with pytest.raises(OSError, match="killed"):
        extract_store(tmp_path / "ext.zarr", taps="mlp,sum:4", extend=True)
    monkeypatch.setattr(ShardWriter, "write", real)
    s = open_store(path)
    assert s.taps == ["blocks", "mlp", "sum:4"]
    with pytest.raises(StoreError, match="not finished"):
        s.tap_features("sum:4")[:]
    extract_store(tmp_path / "ext.zarr", taps="mlp,sum:4", extend=True)  # resumes
    assert_same_store(path, once)


def test_extend_refuses_other_settings_and_unfinished_stores(
    extract_store: Callable[..., str], tmp_path: Path
) -> None:
    path = extract_store(tmp_path / "s.zarr", taps="blocks")
    with pytest.raises(StoreError, match=r"(?s)only adds taps.*dtype: store has 'float16'"):
        extract_store(tmp_path / "s.zarr", taps="embed", extend=True, dtype="fp32")
    with pytest.raises(StoreError, match=r"(?s)only adds taps.*layers"):
        extract_store(tmp_path / "s.zarr", taps="embed", extend=True, layers="2")
    with pytest.raises(StoreError, match="needs an existing store"):
        extract_store(tmp_path / "new.zarr", taps="embed", extend=True)
    assert open_store(path).taps == ["blocks"]


def test_damaged_extension_array_is_found_repaired_and_rewritten(
    extract_store: Callable[..., str], tmp_path: Path
) -> None:
    """A flipped bit in an added tap is named by verify; --repair resets that extension's
    marker only, and rerunning --extend rewrites it to the original bytes."""
    path = extract_store(tmp_path / "s.zarr", taps="blocks")
    extract_store(tmp_path / "s.zarr", taps="embed", extend=True)
    good = open_store(path).tap_features("embed")[:]
    shard = tmp_path / "s.zarr" / "embed" / "z0" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0x01
    shard.write_bytes(bytes(data))
    report = verify_store(path)
    assert [(b["shard"], b["array"]) for b in report["bad"]] == [(1, "embed/z0")]
    verify_store(path, repair=True)
    s = open_store(path)
    assert s.done_shards().all()  # the block outputs were never touched
    assert not s.done_shards("progress/extend_0/done")[1]
    extract_store(tmp_path / "s.zarr", taps="embed", extend=True)
    np.testing.assert_array_equal(open_store(path).tap_features("embed")[:], good)
    assert verify_store(path)["bad"] == []


def test_cli_extract_taps_and_extend(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    base = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo",
            "--store", str(tmp_path / "c.zarr"), "--limit", "2", "--workers", "0"]  # fmt: skip
    run = CliRunner().invoke
    assert run(app, [*base, "--taps", "blocks"]).exit_code == 0
    refused = run(app, [*base, "--taps", "blocks,sum:2"])
    assert refused.exit_code != 0 and "--extend" in refused.output
    assert run(app, [*base, "--taps", "sum:2", "--extend"]).exit_code == 0
    info = run(app, ["info", str(tmp_path / "c.zarr")])
    assert "taps         blocks, sum:2" in info.output


def test_extended_store_round_trips_through_hdf5_and_verify_names_pending_taps(
    extract_store: Callable[..., str],
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from losa_cache.cli.main import app
    from losa_cache.store.hdf5 import export_hdf5, import_hdf5
    from losa_cache.store.writer import mark_for_repair

    path = extract_store(tmp_path / "s.zarr", taps="blocks")
    extract_store(tmp_path / "s.zarr", taps="sum:4", extend=True)
    export_hdf5(path, tmp_path / "s.h5", progress=False)
    back = str(tmp_path / "back.zarr")
    import_hdf5(tmp_path / "s.h5", back, progress=False)
    assert_same_store(path, back)
    mark_for_repair(path, [2], arrays=["sum/k_004"])
    report = verify_store(path)
    assert report["pending_shards"] == [] and report["pending_extension_shards"] == {"sum:4": [2]}
    out = CliRunner().invoke(app, ["verify", path]).output
    assert "taps sum:4: 1 shard(s) not written" in out and "--extend --taps sum:4" in out
