"""Extraction: stored features equal a live forward; resume, refusal and bad images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from losa_cache.backbone import create_backbone
from losa_cache.data import get_dataset
from losa_cache.data.base import ImageDecodeError
from losa_cache.data.torch_dataset import TorchImages
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError, open_store
from losa_cache.store import schema as S

MICRO = dict(model="vit_micro", random_init=True, workers=0)


def live_features(
    rows: list[int], layers: list[int], batch: int, spec: str = "demo"
) -> list[np.ndarray]:
    """Block outputs computed directly, in the same batches the extractor uses."""
    backbone = create_backbone("vit_micro", random_init=True)
    images = TorchImages(get_dataset(spec), backbone.transform(), rows)
    outs: list[list[torch.Tensor]] = [[] for _ in layers]
    for start in range(0, len(rows), batch):
        x = torch.stack([images[k][0] for k in range(start, min(start + batch, len(rows)))])
        for acc, y in zip(outs, backbone.intermediates(x, layers), strict=True):
            acc.append(y)
    return [torch.cat(o) for o in outs]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_store_equals_live_forward(dtype: str, tmp_path: Path) -> None:
    store_path = str(tmp_path / "s.zarr")
    extract(
        ExtractConfig(
            dataset="demo",
            store=store_path,
            dtype=dtype,
            limit=24,
            layers="1,3",
            batch_size=8,
            shard_rows=24,
            chunk_rows=8,
            **MICRO,
        ),
        progress=False,
    )
    store = open_store(store_path)
    ds = get_dataset("demo")
    wanted = {s: ds.split_indices()[s][:24] for s in ("train", "val", "test")}
    data_rows = sorted(r for v in wanted.values() for r in v)
    assert list(store.sources) == [ds.samples[r].source for r in data_rows]
    live = live_features(data_rows, [1, 3], batch=8)
    for layer, ref in zip([1, 3], live, strict=True):
        got = store.features(layer).read_torch(slice(None))
        cast = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            dtype
        ]
        assert got.dtype == cast
        assert torch.equal(got, ref.to(cast)), f"block {layer} differs from the live forward"
    assert store.complete and store.valid.all()
    assert {k: len(v) for k, v in store.splits.items()} == {"train": 24, "val": 24, "test": 24}


def test_numpy_view_of_bf16_is_exact_upcast(tmp_path: Path) -> None:
    path = str(tmp_path / "b.zarr")
    extract(
        ExtractConfig(dataset="demo", store=path, dtype="bf16", limit=4, **MICRO), progress=False
    )
    feats = open_store(path).features(-1)
    np.testing.assert_array_equal(feats[:], feats.read_torch(slice(None)).float().numpy())


def _arrays(path: str) -> dict[str, np.ndarray]:
    store = open_store(path)
    names = [S.feature_name(layer) for layer in store.layers]
    names += [S.STATUS, S.ERROR, S.SOURCE, S.DONE, S.CHECKSUMS, f"{S.TASKS}/{store.default_task}"]
    names += [S.split_name(s) for s in store.splits]
    return {n: store.group[n][:] for n in names}


KILL_SCRIPT = """
import sys, time
from losa_cache.store.writer import ShardWriter
from losa_cache.extract import ExtractConfig, extract
slow = ShardWriter.write
def write(self, *a, **k):
    slow(self, *a, **k)
    time.sleep(0.15)  # give the test time to kill us mid-run
ShardWriter.write = write
extract(ExtractConfig(model="vit_micro", random_init=True, workers=0, dataset="demo",
        store=sys.argv[1], limit=200, shard_rows=16, chunk_rows=8, batch_size=8),
        progress=False)
"""


def test_killed_run_resumes_to_identical_store(tmp_path: Path) -> None:
    killed, clean = str(tmp_path / "killed.zarr"), str(tmp_path / "clean.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, killed], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    done_dir = Path(killed) / "progress" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        # finished marker chunks only (zarr writes each as a .partial file, then renames)
        if done_dir.is_dir() and sum(p.name.isdigit() for p in done_dir.iterdir()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_store(killed)
    n_done = int(partial.done_shards().sum())
    assert 3 <= n_done < len(partial.done_shards()), "the kill must land mid-run"
    assert not partial.complete
    with pytest.raises(StoreError, match="incomplete"):
        partial.require_complete()
    cfg = dict(dataset="demo", limit=200, shard_rows=16, chunk_rows=8, batch_size=8, **MICRO)
    resumed = extract(ExtractConfig(store=killed, **cfg), progress=False)
    assert resumed.resumed and resumed.shards_written == len(partial.done_shards()) - n_done
    extract(ExtractConfig(store=clean, **cfg), progress=False)
    a, b = _arrays(killed), _arrays(clean)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_rerun_of_complete_store_writes_nothing(micro_store: str) -> None:
    cfg = ExtractConfig(
        dataset="demo",
        store=micro_store,
        dtype="float32",
        limit=64,
        chunk_rows=16,
        shard_rows=32,
        **MICRO,
    )
    result = extract(cfg, progress=False)
    assert result.resumed and result.written == 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"seed": 1}, "weights_sha256"),
        ({"layers": "last:2"}, "layers"),
        ({"dtype": "float16"}, "dtype"),
        ({"limit": 32}, "rows.count"),
        ({"crop_pct": 0.875}, "crop_pct"),
    ],
)
def test_mismatched_rerun_is_refused(micro_store: str, change: dict, named: str) -> None:
    base = dict(dataset="demo", store=micro_store, dtype="float32", limit=64, **MICRO)
    before = _arrays(micro_store)
    with pytest.raises(StoreError, match=named):
        extract(ExtractConfig(**{**base, **change}), progress=False)
    after = _arrays(micro_store)
    for name in before:  # nothing already written is touched
        np.testing.assert_array_equal(before[name], after[name])


def _folder_with_bad_images(root: Path) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 40), (i * 40, 10, 200 if cls == "a" else 0)).save(
                root / cls / f"{i}.png"
            )
    Image.new("CMYK", (40, 40), (10, 20, 30, 0)).save(root / "a" / "cmyk.jpg")
    Image.new("LA", (40, 40)).save(root / "b" / "grey_alpha.png")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = root / "b" / "0.png"
    (root / "b" / "truncated.png").write_bytes(good.read_bytes()[:60])
    return root


def test_undecodable_images_are_skipped_and_named(tmp_path: Path) -> None:
    root = _folder_with_bad_images(tmp_path / "imgs")
    path = str(tmp_path / "s.zarr")
    result = extract(
        ExtractConfig(dataset=f"imagefolder:{root}", store=path, **MICRO), progress=False
    )
    store = open_store(path)
    skipped = {Path(s["source"]).name for s in store.skipped()}
    assert skipped == {"broken.jpg", "truncated.png"}
    assert {Path(s["source"]).name for s in result.skipped} == skipped
    assert all("broken.jpg" in s["error"] or "truncated.png" in s["error"] for s in store.skipped())
    bad_rows = [s["row"] for s in store.skipped()]
    assert not store.valid[bad_rows].any() and store.valid.sum() == store.num_images - 2
    assert not set(bad_rows) & set(store.split_rows("train").tolist())  # never trained on
    assert store.complete


def test_strict_mode_fails_and_keeps_finished_shards(tmp_path: Path) -> None:
    root = _folder_with_bad_images(tmp_path / "imgs")
    path = str(tmp_path / "s.zarr")
    with pytest.raises(ImageDecodeError, match=r"broken\.jpg"):
        extract(
            ExtractConfig(
                dataset=f"imagefolder:{root}",
                store=path,
                strict=True,
                shard_rows=2,
                chunk_rows=1,
                batch_size=2,
                **MICRO,
            ),
            progress=False,
        )
    store = open_store(path)
    assert not store.complete and store.done_shards().any()  # shards before the bad one kept


def test_write_failure_leaves_store_incomplete_then_resume_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from losa_cache.store import writer as W

    calls = {"n": 0}
    real = W.ShardWriter.write

    def failing(self, shard, *a, **k):  # the third shard hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, shard, *a, **k)

    path = str(tmp_path / "s.zarr")
    cfg = dict(dataset="demo", store=path, limit=40, shard_rows=16, chunk_rows=8, **MICRO)
    monkeypatch.setattr(W.ShardWriter, "write", failing)
    expected = r"no space left on the disk \(ENOSPC\): free space .*, then rerun .* shards are kept"
    with pytest.raises(StoreError, match=expected):
        extract(ExtractConfig(**cfg), progress=False)
    partial = open_store(path)
    assert not partial.complete and partial.done_shards().sum() == 2, "finished shards kept"
    monkeypatch.setattr(W.ShardWriter, "write", real)
    extract(ExtractConfig(**cfg), progress=False)
    assert open_store(path).complete


def test_second_concurrent_extract_is_refused(tmp_path: Path) -> None:
    from losa_cache.store.writer import store_lock

    path = str(tmp_path / "s.zarr")
    with store_lock(path), pytest.raises(StoreError, match="another extraction"):
        extract(ExtractConfig(dataset="demo", store=path, limit=4, **MICRO), progress=False)


def test_not_a_store_is_never_overwritten(tmp_path: Path) -> None:
    import zarr

    g = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    g.create_array("mine", shape=(2,), dtype="int8")
    with pytest.raises(StoreError, match="not a losa-cache store"):
        extract(
            ExtractConfig(dataset="demo", store=str(tmp_path / "other.zarr"), limit=4, **MICRO),
            progress=False,
        )
    assert "mine" in zarr.open_group(str(tmp_path / "other.zarr"), mode="r")
