"""`info --sources` lists what `tasks add` label files name (as `tasks add --help` says)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import open_store


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_sources_feed_a_tasks_add_label_file(photo_store: str, tmp_path: Path) -> None:
    store = tmp_path / "photos.zarr"
    shutil.copytree(photo_store, store)
    lines = invoke("info", str(store), "--sources").splitlines()
    assert lines == [str(s) for s in open_store(store).sources]  # row order, nothing else
    doc = json.loads(invoke("info", str(store), "--json", "--sources"))
    assert doc["sources"] == lines and doc["num_images"] == len(lines)
    assert "sources" not in json.loads(invoke("info", str(store), "--json"))  # kept small
    assert "info STORE --sources" in invoke("tasks", "add", "--help")
    # a second labelling, written from the listed sources (the class folder decides)
    kind = {"cat": "furry", "dog": "furry", "owl": "feathered"}
    labels = tmp_path / "kind.txt"
    labels.write_text("".join(f"{s} {kind[Path(s).parent.name]}\n" for s in lines))
    out = invoke("tasks", "add", str(store), "--name", "kind", "--labels", str(labels))
    assert f"{len(lines)} of {len(lines)} rows labelled, 2 classes" in out
    s = open_store(store)
    want = [s.classes("kind").index(kind[Path(x).parent.name]) for x in lines]
    assert s.labels("kind").tolist() == want
