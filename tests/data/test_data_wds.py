"""wds:PATTERN: the same rows, labels, splits and features as an imagefolder of the same
images; corrupt members skipped with their reason; resumable after SIGKILL; one-line errors."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from losa_cache.data import get_dataset
from losa_cache.data.base import DatasetError, ImageDecodeError
from losa_cache.data.packed import spec_items
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError, open_store
from losa_cache.store import schema as S
from tests._packed_sets import EXTRACT, png_bytes, same_store_content


def pixels(dataset, row: int) -> np.ndarray:
    return np.asarray(dataset.load(row))


@pytest.mark.parametrize("form", ["wds", "wds_split_key"])
def test_rows_equal_the_imagefolder_of_the_same_images(packed_sets: dict, form: str) -> None:
    folder = get_dataset(packed_sets["specs"]["imagefolder"])
    shards = get_dataset(packed_sets["specs"][form])
    assert shards.classes == folder.classes  # class names from .txt / json:label
    assert shards.table.labels.tolist() == folder.table.labels.tolist()
    assert shards.split_indices() == folder.split_indices()
    for row in range(len(folder)):
        np.testing.assert_array_equal(pixels(shards, row), pixels(folder, row))
    first = folder.samples[0].source.split("/", 1)[1]  # <class>/<file> in train/
    assert shards.samples[0].source == f"train-000.tar/{first}"
    assert len(shards.meta["fingerprint"]["wds_index_sha256"]) == 64


def test_cls_labels_keep_their_integer_values(packed_sets: dict) -> None:
    folder = get_dataset(packed_sets["specs"]["imagefolder"])
    named = ",".join(f"{s}={p}" for s, p in packed_sets["patterns"].items())
    shards = get_dataset(f"wds:{named}")  # label-key=cls, the default
    assert shards.classes == [str(i) for i in range(len(folder.classes))]
    assert shards.table.labels.tolist() == folder.table.labels.tolist()


def test_extracted_store_equals_the_imagefolder_store(
    packed_sets: dict, packed_reference: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "wds.zarr")
    extract(ExtractConfig(dataset=packed_sets["specs"]["wds"], store=path, **EXTRACT),
            progress=False)  # fmt: skip
    same_store_content(path, packed_reference)


def test_shards_through_fsspec_memory_urls(packed_sets: dict) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for tar in sorted((packed_sets["root"] / "wds").glob("val-*.tar")):
        fs.pipe(f"/wds-test/{tar.name}", tar.read_bytes())
    try:
        remote = get_dataset("wds:val=memory://wds-test/val-{000..001}.tar,label-key=txt")
        local = get_dataset(f"wds:val={packed_sets['patterns']['val']},label-key=txt")
        assert [s.label for s in remote.samples] == [s.label for s in local.samples]
        assert remote.meta["fingerprint"] == local.meta["fingerprint"]  # where is not what
        for row in range(len(local)):
            np.testing.assert_array_equal(pixels(remote, row), pixels(local, row))
    finally:
        fs.rm("/wds-test", recursive=True)


# -- bad shards ---------------------------------------------------------------------------
def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A plain tar of (name, bytes) members, in order."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)))


def test_corrupt_and_truncated_members_are_skipped_rows_with_reasons(tmp_path: Path) -> None:
    members = [("a.png", good_png(0)), ("a.cls", b"0"), ("b.png", b"not a png at all"),
               ("b.cls", b"1"), ("c.cls", b"1"), ("d.png", good_png(1)), ("d.cls", b"0"),
               ("e.cls", b"1"), ("e.png", good_png(2))]  # fmt: skip
    tar = write_tar(tmp_path / "s-000.tar", members)
    data = tar.read_bytes()
    offset = data.index(good_png(2))
    tar.write_bytes(data[: offset + 40])  # cut e.png short: a truncated final member
    ds = get_dataset(f"wds:{tar}")
    assert [s.source for s in ds.samples] == [
        "s-000.tar/a.png", "s-000.tar/b.png", "s-000.tar/c", "s-000.tar/d.png",
        "s-000.tar/e.png"]  # fmt: skip
    assert ds.load(0).size == (8, 6) and ds.load(3).size == (8, 6)
    for row, reason in [(1, "cannot identify image"), (2, "no image member in sample 'c'"),
                        (4, "truncated tar member e.png")]:  # fmt: skip
        with pytest.raises(ImageDecodeError, match=reason):
            ds.load(row)
    store = str(tmp_path / "s.zarr")
    result = extract(ExtractConfig(dataset=f"wds:{tar}", store=store, **EXTRACT), progress=False)
    skipped = {s["source"]: s["error"] for s in result.skipped}
    assert sorted(skipped) == ["s-000.tar/b.png", "s-000.tar/c", "s-000.tar/e.png"]
    assert "truncated tar member e.png: 40 of" in skipped["s-000.tar/e.png"]
    assert open_store(store).valid.tolist() == [True, False, False, True, False]


def test_members_over_the_byte_bound_are_skipped_unread(packed_sets: dict) -> None:
    ds = get_dataset(packed_sets["specs"]["wds"])
    ds.max_file_bytes = int(ds.sizes[0]) - 1  # get_dataset's max_file_bytes, where it has one
    with pytest.raises(ImageDecodeError, match=r"bytes is over the limit of"):
        ds.load(0)
    ds.max_file_bytes = int(ds.sizes[0])
    assert ds.load(0).size == (32, 32)


@pytest.mark.filterwarnings("ignore:.*every labelled image has class")
def test_corrupt_header_ends_the_shard_with_a_warning(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "h.tar", [("a.png", good_png(0)), ("a.cls", b"0"),
                                         ("b.png", good_png(1)), ("b.cls", b"1")])  # fmt: skip
    data = bytearray(tar.read_bytes())
    third = data.index(b"b.png")  # the header of b.png: break its checksum
    data[third + 148 : third + 156] = b"0000000\0"
    tar.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"corrupt tar header at byte \d+"):
        ds = get_dataset(f"wds:{tar}")
    assert [s.source for s in ds.samples] == ["h.tar/a.png"]
    assert ds.meta["shard_errors"]


def test_missing_label_member_is_one_line(packed_sets: dict) -> None:
    pattern = packed_sets["patterns"]["val"]
    with pytest.raises(DatasetError, match=r"has no \.lbl member for label-key=lbl") as e:
        get_dataset(f"wds:{pattern},label-key=lbl")
    assert "\n" not in str(e.value) and "label-key=none" in str(e.value)
    with pytest.raises(DatasetError, match=r"has no field 'nope' \(label-key=json:nope\)"):
        get_dataset(f"wds:{pattern},label-key=json:nope")
    unlabelled = get_dataset(f"wds:{pattern},label-key=none")
    assert set(unlabelled.table.labels.tolist()) == {-1}


def test_missing_split_field_and_bad_specs_are_one_line(packed_sets: dict, tmp_path) -> None:
    pattern = packed_sets["patterns"]["val"]
    with pytest.raises(DatasetError, match=r"has no field 'fold' \(split-key=json:fold\)"):
        get_dataset(f"wds:{pattern},split-key=json:fold")
    with pytest.raises(DatasetError, match="not both"):
        get_dataset(f"wds:val={pattern},split-key=json:split")
    with pytest.raises(DatasetError, match=r"shard not found: .*val-002\.tar"):
        get_dataset(f"wds:{pattern.replace('001', '007')}")
    gz = tmp_path / "z.tar"
    gz.write_bytes(b"\x1f\x8b" + b"\0" * 600)
    with pytest.raises(DatasetError, match="not an uncompressed tar"):
        get_dataset(f"wds:{gz}")


def test_spec_items_keep_braces_whole() -> None:
    assert spec_items("train=/d/{a,b}-{0..2}.tar, val=/d/v.tar,label-key=json:y") == [
        "train=/d/{a,b}-{0..2}.tar", "val=/d/v.tar", "label-key=json:y"]  # fmt: skip


def test_missing_package_names_the_extra(packed_sets: dict, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DatasetError, match=r"pip install 'losa-cache\[wds\]'"):
        get_dataset(packed_sets["specs"]["wds"])


def test_changed_shards_are_refused_on_resume(packed_sets: dict, tmp_path: Path) -> None:
    """Same member names, other bytes: the index hash in the identity tells them apart."""
    shutil.copytree(packed_sets["root"] / "wds", tmp_path / "wds")
    spec = f"wds:{tmp_path}/wds/val-{{000..001}}.tar,label-key=txt"
    store = str(tmp_path / "s.zarr")
    extract(ExtractConfig(dataset=spec, store=store, **EXTRACT), progress=False)
    tar = tmp_path / "wds" / "val-000.tar"
    with tarfile.open(tar) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    first_png = next(i for i, (n, _) in enumerate(members) if n.endswith(".png"))
    members[first_png] = (members[first_png][0], good_png(7))
    write_tar(tar, members)
    with pytest.raises(StoreError, match=r"data\.wds_index_sha256"):
        extract(ExtractConfig(dataset=spec, store=store, **EXTRACT), progress=False)


# -- resume after SIGKILL -----------------------------------------------------------------
KILL_SCRIPT = """
import sys, time
from losa_cache.store.writer import ShardWriter
from losa_cache.extract import ExtractConfig, extract
from tests._packed_sets import EXTRACT
slow = ShardWriter.write
def write(self, *a, **k):
    slow(self, *a, **k)
    time.sleep(0.15)  # give the test time to kill us mid-run
ShardWriter.write = write
extract(ExtractConfig(dataset=sys.argv[2], store=sys.argv[1], **{**EXTRACT, "shard_rows": 2}),
        progress=False)
"""


def killed_then_resumed_equals_clean(spec: str, tmp_path: Path) -> None:
    """Extract ``spec`` in a process SIGKILLed after 3 shards, resume, compare to a clean
    run array by array (also used by test_data_hf.py)."""
    killed, clean = str(tmp_path / "killed.zarr"), str(tmp_path / "clean.zarr")
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, killed, spec], env=env, cwd=repo)
    done_dir = Path(killed) / "progress" / "done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and sum(p.name.isdigit() for p in done_dir.iterdir()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = open_store(killed)
    n_done = int(partial.done_shards().sum())
    assert 3 <= n_done < len(partial.done_shards()), "the kill must land mid-run"
    cfg: dict[str, Any] = {**EXTRACT, "shard_rows": 2, "dataset": spec}
    resumed = extract(ExtractConfig(store=killed, **cfg), progress=False)
    assert resumed.resumed and resumed.shards_written == len(partial.done_shards()) - n_done
    extract(ExtractConfig(store=clean, **cfg), progress=False)
    a, b = open_store(killed), open_store(clean)
    names = [S.feature_name(layer) for layer in b.layers]
    names += [S.STATUS, S.ERROR, S.SOURCE, S.DONE, S.CHECKSUMS, f"{S.TASKS}/{b.default_task}"]
    for name in names + [S.split_name(s) for s in b.splits]:
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:], err_msg=name)


def test_killed_extraction_resumes_to_the_same_store(packed_sets: dict, tmp_path: Path) -> None:
    killed_then_resumed_equals_clean(packed_sets["specs"]["wds"], tmp_path)


def test_label_values_index_like_list_files() -> None:
    from losa_cache.data.packed import index_values

    assert index_values([3, 1, None, 3, -1], "w") == ([1, 0, -1, 1, -1], ["1", "3"])
    assert index_values(["dog", "cat", "dog"], "w") == ([1, 0, 1], ["cat", "dog"])
    assert index_values([0, 2, 1], "w") == ([0, 2, 1], ["0", "1", "2"])
    with pytest.raises(DatasetError, match="mix integers and class names"):
        index_values([1, "cat"], "w")
    with pytest.raises(DatasetError, match="label -3 is negative"):
        index_values([1, -3], "w")


def test_extras_are_imported_only_when_used() -> None:
    """Importing the library (data, extract, train, sweep) loads none of the extras."""
    code = (
        "import sys, losa_cache.data, losa_cache.extract, losa_cache.train, losa_cache.sweep\n"
        "extras = {'webdataset', 'braceexpand', 'datasets', 'pyarrow', 'tensorboard'}\n"
        "print(sorted(extras & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
