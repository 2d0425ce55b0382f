"""An array's metadata and its owner are checked when it is opened: a ``zarr.json`` that
disagrees with the manifest (shape, data type, chunks) and an array copied in from
another store of the same shape are damage named in one line by every reader (reads,
``info``, ``verify``, extract), never read as data; ``verify --repair`` then the same
extract converge to the original store. A manifest that does not parse names its field."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import StoreError, open_store
from losa_cache.store import schema as S
from losa_cache.store.errors import StoreIntegrityError
from losa_cache.store.info import store_info

runner = CliRunner()
ARRAY = "features/block_001"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_extract) -> dict[str, str]:
    """Two stores of the same shape but other weights (seed), 9 rows in 3 shards."""
    root = tmp_path_factory.mktemp("meta")
    run = functools.partial(tiny_extract, layers="1,3", dtype="float16")
    return {"a": run(root / "a.zarr"), "b": run(root / "b.zarr", seed=1),
            "run": run}  # fmt: skip


@pytest.fixture
def store(made: dict, tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(made["a"], path)
    return path


def cli(*args: str, code: int) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, KeyError)
    return result.output


def edit(path: Path, change) -> None:
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc)
    meta.write_text(json.dumps(doc))


def refused_everywhere(path: Path, says: str) -> None:
    """Reads, info, verify and extract all refuse, naming the array and the fix."""
    with pytest.raises(StoreIntegrityError, match=f"array {ARRAY} .*{says}.*--repair"):
        open_store(str(path)).features(1)[5:9]
    with pytest.raises(StoreIntegrityError, match=f"array {ARRAY}"):
        store_info(str(path))
    out = cli("info", str(path), code=2)
    assert ARRAY in out and len(out.strip().splitlines()) == 1
    out = cli("verify", str(path), code=1)
    assert f"{ARRAY}: metadata: " in out
    with pytest.raises(StoreIntegrityError, match=f"array {ARRAY}"):
        open_store(str(path)).check_arrays()


def repair_and_resume(path: Path, made: dict) -> None:
    """verify --repair, then the extract command that wrote it: the original store."""
    cli("verify", str(path), "--repair", code=0)
    made["run"](path, layers="1,3", dtype="float16")
    res = runner.invoke(app, ["verify", str(path), "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)  # progress goes to stderr
    assert again["bad_shards"] == [] and again["pending_shards"] == []
    got, want = open_store(str(path)), open_store(made["a"])
    assert got.complete
    for layer in (1, 3):
        np.testing.assert_array_equal(got.features(layer)[:], want.features(layer)[:])


EDITS = {
    "shape": lambda d: d.update(shape=[7, *d["shape"][1:]]),
    "data_type": lambda d: d.update(data_type="float32"),
    "chunk shape": lambda d: d["codecs"][0]["configuration"]["chunk_shape"].__setitem__(0, 1),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_edited_metadata_is_named_damage_that_repair_fixes(
    what: str, store: Path, made: dict
) -> None:
    edit(store / ARRAY, EDITS[what])
    refused_everywhere(store, f"its {what} is")
    with pytest.raises(StoreError, match=f"array {ARRAY}"):
        made["run"](store, layers="1,3", dtype="float16")  # no extract before the repair
    repair_and_resume(store, made)


def test_an_array_of_another_store_is_refused_by_reads(store: Path, made: dict) -> None:
    a, b = open_store(made["a"]), open_store(made["b"])
    assert not np.array_equal(a.features(1)[:], b.features(1)[:])
    shutil.rmtree(store / ARRAY)
    shutil.copytree(Path(made["b"]) / ARRAY, store / ARRAY)  # valid checksums, same shape
    refused_everywhere(store, "belongs to another store")
    repair_and_resume(store, made)


def test_a_missing_array_is_named(store: Path, made: dict) -> None:
    shutil.rmtree(store / ARRAY)
    refused_everywhere(store, "it is missing")
    repair_and_resume(store, made)


def test_damaged_done_markers_metadata_is_repaired(store: Path, made: dict) -> None:
    edit(store / S.DONE, EDITS["shape"])
    with pytest.raises(StoreIntegrityError, match=f"array {S.DONE}"):
        open_store(str(store)).require_complete()
    cli("verify", str(store), code=1)
    repair_and_resume(store, made)


def tamper(path: Path, change) -> None:
    edit(path, lambda d: change(d["attributes"]["losa_cache"]))


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda m: m.update(task_arrays={m["default_task"]: "splits/train"}), "task_arrays"),
        (lambda m: m.update(task_arrays=["x"]), "key 'task_arrays'"),
        (lambda m: m["layout"].update(taps=["blocks", "nope"]), "layout.taps"),
        (lambda m: m["layout"].update(taps="blocks"), "layout.taps"),
        (lambda m: m["layout"].update(num_images="9"), "layout.num_images"),
        (lambda m: m["layout"].pop("dim"), "no layout.dim"),
        (lambda m: m.pop("tasks"), "no key 'tasks'"),
        (lambda m: m.update(default_task="gone"), "default_task"),
        (lambda m: m.update(extensions=[{"tapz": []}]), r"extensions\[0\]"),
    ],
)
def test_a_tampered_manifest_is_one_line_naming_the_field(store: Path, change, says: str) -> None:
    tamper(store, change)
    with pytest.raises(StoreIntegrityError, match=says):
        open_store(str(store))
    for command in ("info", "verify"):
        out = cli(command, str(store), code=2)
        assert "manifest" in out and len(out.strip().splitlines()) == 1, out


def test_a_task_array_without_classes_is_named(store: Path, tmp_path: Path) -> None:
    s = open_store(str(store))
    task = s.manifest.task_path(s.default_task)
    edit(store / task, lambda d: d["attributes"].pop("classes"))
    with pytest.raises(StoreIntegrityError, match=f"array {task} .*its attribute 'classes'"):
        open_store(str(store)).classes()
    assert "tasks add --overwrite" in cli("info", str(store), code=2)
    labels = tmp_path / "l.txt"
    labels.write_text("".join(f"{s} {i % 2}\n" for i, s in enumerate(s.sources)))
    add = ["tasks", "add", str(store), "--name", s.default_task, "--labels", str(labels)]
    cli(*add, "--overwrite", code=0)  # the fix the message names
    assert open_store(str(store)).classes() == ["0", "1"]


def test_a_task_named_like_a_store_file_is_refused(store: Path, tmp_path: Path) -> None:
    labels = tmp_path / "l.txt"
    labels.write_text("".join(f"{s} 1\n" for s in open_store(str(store)).sources))
    for name in ("zarr.json", "x.0123456789abcdef0123456789abcdef.partial"):
        out = cli("tasks", "add", str(store), "--name", name, "--labels", str(labels), code=2)
        assert "store's own files" in out and len(out.strip().splitlines()) == 1
    assert open_store(str(store)).tasks == [open_store(str(store)).default_task]


@pytest.mark.parametrize("damage", ["copied", "shape"])
def test_train_refuses_a_damaged_array_in_one_line(
    damage: str, store: Path, made: dict, tmp_path: Path
) -> None:
    if damage == "copied":
        shutil.rmtree(store / ARRAY)
        shutil.copytree(Path(made["b"]) / ARRAY, store / ARRAY)
    else:
        edit(store / ARRAY, EDITS["shape"])
    args = ["train", "--store", str(store), "--out", str(tmp_path / "run"), "--rank", "4",
            "--layers", "1,3", "--steps", "2", "--batch-size", "4", "--device", "cpu",
            "--workers", "1"]  # fmt: skip
    out = cli(*args, code=2)
    assert f"array {ARRAY}" in out and "--repair" in out


@pytest.mark.parametrize("array", [S.STATUS, S.CHECKSUMS, "features/block_003"])
def test_any_per_shard_array_copied_in_is_repaired(array: str, store: Path, made: dict) -> None:
    shutil.rmtree(store / array)
    shutil.copytree(Path(made["b"]) / array, store / array)
    with pytest.raises(StoreIntegrityError, match=f"array {array} .*another store"):
        open_store(str(store)).check_arrays()
    assert f"{array}: metadata: it belongs to another store" in cli("verify", str(store), code=1)
    repair_and_resume(store, made)
