"""A store is only created where nothing of the user's can be lost, and store I/O failures
(a file as the store, read-only or full disks, no permission, no cloud credentials, a file
that is not HDF5) end in one line that names the problem and the fix."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.extract import ExtractConfig, extract
from losa_cache.store import StoreError, open_store
from losa_cache.store import writer as W
from losa_cache.store.hdf5 import export_hdf5, import_hdf5
from losa_cache.store.target import inspect_target

runner = CliRunner()
MICRO = dict(model="vit_micro", random_init=True, workers=0, limit=4)
CLI = ["extract", "--model", "vit_micro", "--random-init", "--workers", "0", "--limit", "4"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256: what must survive a refused command."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def notes(folder: Path) -> Path:
    (folder / "ideas").mkdir(parents=True)
    (folder / "todo.txt").write_text("buy GPUs\n")
    (folder / "ideas" / "side-tuning.md").write_text("# LoSA\n")
    return folder


def image_folder(root: Path) -> Path:
    """imagefolder layout: 2 classes x 3 tiny PNGs."""
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def run(*args: str, code: int) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


# -- never into the user's folders ------------------------------------------------------
def test_extract_into_a_folder_of_notes_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    folder = notes(tmp_path / "notes")
    before = snapshot(folder)
    out = run(*CLI, "--dataset", "demo", "--store", str(folder), code=2)
    assert str(folder) in out and "not a losa-cache store" in out
    assert "ideas" in out and "todo.txt" in out, "the message names what is in the folder"
    assert snapshot(folder) == before


def test_extract_into_the_data_sets_own_folder_keeps_the_images(tmp_path: Path) -> None:
    images = image_folder(tmp_path / "pets")
    before = snapshot(images)
    with pytest.raises(StoreError, match="cat, dog"):
        extract(ExtractConfig(dataset=f"imagefolder:{images}", store=str(images), **MICRO))
    assert snapshot(images) == before


@pytest.mark.parametrize("store, says", [(".", r"\. is not empty.*todo\.txt"), ("", "is empty")])
def test_extract_into_the_working_folder_is_refused(
    store: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(notes(tmp_path / "work"))
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=says):
        extract(ExtractConfig(dataset="demo", store=store, **MICRO), progress=False)
    assert snapshot(tmp_path) == before


def test_many_entries_are_summarised(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        (folder / f"f{i:02d}.txt").write_text("x")
    with pytest.raises(StoreError, match=r"f00.txt, f01.txt, .*\.\.\. \(12 entries\)"):
        inspect_target(str(folder))


def test_empty_folder_and_missing_path_are_created_and_a_store_resumes(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o710)  # a mode no recreated folder gets
    first = extract(ExtractConfig(dataset="demo", store=str(empty), **MICRO), progress=False)
    assert not first.resumed and open_store(str(empty)).complete
    assert empty.stat().st_mode & 0o777 == 0o710, "the user's folder is kept, not recreated"
    again = extract(ExtractConfig(dataset="demo", store=str(empty), **MICRO), progress=False)
    assert again.resumed and again.shards_written == 0
    nested = tmp_path / "a" / "b.zarr"
    extract(ExtractConfig(dataset="demo", store=str(nested), **MICRO), progress=False)
    assert open_store(str(nested)).complete


def test_interrupted_creation_is_ours_and_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cut.zarr"

    def dies(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt  # cut off mid-creation, after some arrays exist

    monkeypatch.setattr(W, "write_task", dies)
    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig(dataset="demo", store=str(path), **MICRO), progress=False)
    assert (path / "features").is_dir() and inspect_target(str(path)) == "partial"
    with pytest.raises(StoreError, match="not a losa-cache store"):
        open_store(str(path))  # not a store yet
    assert "creation was cut off" in run("verify", str(path), code=2)
    (path / "later.txt").write_text("mine")  # a file of the user's: redoing would delete it
    with pytest.raises(StoreError, match=r"interrupted store creation and also later\.txt"):
        inspect_target(str(path))
    (path / "later.txt").unlink()
    monkeypatch.undo()
    done = extract(ExtractConfig(dataset="demo", store=str(path), **MICRO), progress=False)
    assert not done.resumed and open_store(str(path)).complete


def test_a_foreign_zarr_group_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs.zarr"
    zarr.open_group(str(path), mode="w").create_array("mine", shape=(2,), dtype="int8")
    before = snapshot(path)
    with pytest.raises(StoreError, match="not a losa-cache store"):
        extract(ExtractConfig(dataset="demo", store=str(path), **MICRO), progress=False)
    assert snapshot(path) == before


def test_a_regular_file_as_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "features.bin"
    path.write_bytes(b"precious")
    for store in (path, path / "inside.zarr"):
        out = run(*CLI, "--dataset", "demo", "--store", str(store), code=2)
        assert f"{path} is a file, not a folder" in out
    assert path.read_bytes() == b"precious"


# -- import ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("h5")
    extract(ExtractConfig(dataset="demo", store=str(root / "s.zarr"), **MICRO), progress=False)
    return Path(export_hdf5(str(root / "s.zarr"), root / "s.h5", progress=False)["out"])


@pytest.mark.parametrize("overwrite", [False, True])
def test_import_into_a_folder_of_notes_is_refused(
    export: Path, overwrite: bool, tmp_path: Path
) -> None:
    folder = notes(tmp_path / "notes")
    before = snapshot(folder)
    flags = ["--overwrite"] if overwrite else []
    out = run("import", str(export), str(folder), *flags, code=2)
    assert str(folder) in out and "todo.txt" in out and "not a losa-cache store" in out
    assert snapshot(folder) == before


def test_import_into_the_working_folder_or_a_file_is_refused(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(notes(tmp_path / "work"))
    before = snapshot(tmp_path)
    refusals = {".": r"todo\.txt", "": "path is empty", "todo.txt": "is a file, not a folder"}
    for store, says in refusals.items():
        with pytest.raises(StoreError, match=says):
            import_hdf5(export, store, progress=False)
    assert snapshot(tmp_path) == before


def test_import_into_an_empty_folder_works(export: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    import_hdf5(export, str(empty), progress=False)
    assert open_store(str(empty)).complete


def test_import_of_a_file_that_is_not_hdf5_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5 at all\n")
    out = run("import", str(fake), str(tmp_path / "new.zarr"), code=2)
    assert "not a readable HDF5 file" in out and "losa-cache export" in out
    assert not (tmp_path / "new.zarr").exists()


# -- disks that refuse writes ------------------------------------------------------------
@pytest.mark.parametrize(
    "err, words",
    [
        (errno.EROFS, "read-only file system (EROFS): choose another store path on a writable"),
        (errno.EACCES, "permission denied (EACCES): fix the folder's permissions, or choose"),
    ],
)
def test_unwritable_store_folder_is_one_line(
    err: int, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zarr.storage import _local

    def refuse(path: Path, *_a: object, **_k: object) -> int:
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(_local, "_put", refuse)  # every file zarr writes
    out = run(*CLI, "--dataset", "demo", "--store", str(tmp_path / "s.zarr"), code=2)
    assert words in out and str(tmp_path / "s.zarr") in out


def test_disk_full_is_one_line_that_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = W.ShardWriter.write, {"n": 0}

    def fills_up(self: W.ShardWriter, *a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, *a, **k)

    path = str(tmp_path / "s.zarr")
    args = [*CLI, "--dataset", "demo", "--store", path, "--shard-rows", "4", "--chunk-rows", "4"]
    monkeypatch.setattr(W.ShardWriter, "write", fills_up)
    out = run(*args, code=2)
    assert "no space left on the disk (ENOSPC): free space" in out
    assert "then rerun the same command to resume" in out
    assert open_store(path).done_shards().sum() == 1, "the finished shard is kept"
    monkeypatch.setattr(W.ShardWriter, "write", real)
    assert "resumed" in run(*args, code=0)
    assert open_store(path).complete


# -- object stores without credentials ---------------------------------------------------
@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """botocore finds no credentials anywhere (it fails before any request is sent)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return '{"endpoint_url": "http://127.0.0.1:9"}'  # never contacted


@pytest.mark.parametrize("command", ["extract", "info", "import"])
def test_s3_without_credentials_is_one_line(
    command: str, no_credentials: str, export: Path
) -> None:
    pytest.importorskip("s3fs")
    url, opts = "s3://bucket/s.zarr", ["--storage-options", no_credentials]
    args = {
        "extract": [*CLI, "--dataset", "demo", "--store", url],
        "info": ["info", url],
        "import": ["import", str(export), url],
    }[command]
    out = run(*args, *opts, code=2)
    assert f"no credentials for {url}" in out and "AWS_ACCESS_KEY_ID" in out
