"""Non-finite activations stop extraction naming the tap, the rows and how many (never a
store of NaN features with exit 0); every chunk is stored, fill values included, so
"unwritten", "damaged" and "non-finite" are never confused; ``verify`` agrees with reads."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import losa_cache.extract as E
from losa_cache.cli.main import app
from losa_cache.store import open_store
from losa_cache.store import schema as S
from losa_cache.store.errors import StoreIntegrityError
from losa_cache.store.writer import NonFiniteError, verify_store

ROW = 5  # store row of the bad image: shard 1 (4-row shards)


def poisoned(monkeypatch: pytest.MonkeyPatch, value: float, rows: tuple[int, ...] = (ROW,),
             array: str = "features/block_001") -> None:  # fmt: skip
    """The backbone's output ``array`` holds ``value`` in store ``rows`` (whole row)."""
    real = E.compute_taps
    seen = [0]

    def compute(backbone, x, layout, taps):
        outs = {k: v.clone() for k, v in real(backbone, x, layout, taps).items()}
        first = seen[0]
        seen[0] += len(x)
        for r in rows:
            if first <= r < first + len(x) and array in outs:
                outs[array][r - first] = value
        return outs

    monkeypatch.setattr(E, "compute_taps", compute)


@pytest.fixture
def run(tiny_extract):
    # batches of 1: the poisoned row is found by its position in the run
    return functools.partial(tiny_extract, layers="1,3", batch_size=1, precision="fp32")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int8"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_activations_stop_extraction_naming_them(
    run, dtype: str, value: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.zarr"
    poisoned(monkeypatch, value)
    with pytest.raises(NonFiniteError) as e:
        run(path, dtype=dtype)
    msg = str(e.value)
    assert "features/block_001 (tap blocks, block 1)" in msg and f"store rows {ROW};" in msg
    assert "544 NaN/inf value(s)" in msg and "demo://" in msg and "weights" in msg
    assert "\n" not in msg
    s = open_store(str(path), allow_incomplete=True)
    assert s.done_shards().tolist() == [True, False, False], "the bad shard is not stored"
    monkeypatch.undo()
    run(path, dtype=dtype)  # once the backbone is mended: the same command resumes
    assert open_store(str(path)).complete
    assert verify_store(str(path))["bad"] == []


def test_values_beyond_float16_stop_extraction_naming_the_dtype(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poisoned(monkeypatch, 1e6, rows=(2, 3), array="features/block_003")
    with pytest.raises(NonFiniteError, match=r"beyond the range of the store's float16 in "
                       r"features/block_003 .*store rows 2;.*--dtype bf16 or fp32"):  # fmt: skip
        run(tmp_path / "s.zarr", dtype="float16")


def test_the_cli_says_it_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned(monkeypatch, float("nan"))
    args = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo",
            "--limit", "3", "--workers", "0", "--batch-size", "1", "--shard-rows", "4",
            "--chunk-rows", "2", "--layers", "1,3",
            "--store", str(tmp_path / "s.zarr")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "NaN/inf" in result.output and "Traceback" not in result.output


def test_the_writer_refuses_nonfinite_features_of_any_caller(tiny_extract, tmp_path) -> None:
    from losa_cache.store.store import open_group
    from losa_cache.store.writer import ShardWriter

    path = tiny_extract(tmp_path / "s.zarr", dtype="bfloat16")
    s = open_store(path)
    lay = s.layout
    feats = {n: s.group[n][:4] for n in lay.stored_arrays()}
    name = lay.stored_arrays()[0]
    feats[name][2, 0, 0] = S.BF16_NAN_BITS
    writer = ShardWriter(open_group(path, mode="r+"), lay)
    with pytest.raises(NonFiniteError, match=f"1 row\\(s\\) of {name} .*store rows 2\\)"):
        writer.write(0, feats, s.status[:4], np.full(4, "", dtype=str))
    assert open_store(path).complete, "the shard was left as it was"


def test_fill_valued_chunks_are_stored_and_read_back(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """int8 rows of zeros are codes 0, the codes' fill value: a whole shard of them is
    stored all the same (zarr would skip it and reads would call the shard damaged)."""
    path = tmp_path / "zeros.zarr"
    poisoned(monkeypatch, 0.0, rows=(4, 5, 6, 7))  # shard 1 of block 1, all zero
    run(path, dtype="int8")
    s = open_store(str(path))
    codes, scales = s.features(1).raw(slice(4, 8))
    assert not codes.any() and not scales.any()
    assert (path / "features/block_001/c/1/0/0").stat().st_size > 0
    assert verify_store(str(path))["bad"] == []


def test_verify_and_reads_agree_on_a_lost_shard_file(tiny_extract, tmp_path: Path) -> None:
    path = Path(tiny_extract(tmp_path / "s.zarr", dtype="int8"))
    lost = next((path / "features").rglob("c/1/0/0"))
    array = str(lost.relative_to(path).parent.parent.parent.parent)
    lost.unlink()
    report = verify_store(str(path))
    assert [(b["shard"], b["array"]) for b in report["bad"]] == [(1, array)]
    assert "missing" in report["bad"][0]["reason"]
    name = int(array.split("_")[-1])
    with pytest.raises(StoreIntegrityError, match=r"shard 1 .* missing"):
        open_store(str(path)).features(name)[4:8]
    shutil.rmtree(path)
