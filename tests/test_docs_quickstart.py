"""docs/quickstart.md and docs/python-api.md work as written, on a generated photo folder.

The commands come from the documents' fenced blocks, so a doc and its test cannot drift:
```` ```bash ```` blocks run in order, with checks of what they print and write (the
templates of every doc are parsed by tests/test_docs.py), ```` ```python ```` blocks run as
one script.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
CLASSES = {"cat": 10, "dog": 10, "owl": 10}


def fenced(path: Path, lang: str) -> list[str]:
    """Bodies of the ``lang`` blocks of a document, in order."""
    return [m.group(2) for m in _FENCE.finditer(path.read_text()) if m.group(1) == lang]


def commands(path: Path, lang: str) -> list[list[str]]:
    """The ``losa-cache`` commands of those blocks, as argument lists (without the name)."""
    out = []
    for body in fenced(path, lang):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] == "losa-cache", (
                    f"{path.name}: {line!r} is not a losa-cache command"
                )
                out.append(words[1:])
    return out


def test_quickstart_runs_as_written(tmp_path: Path, make_photos: Callable[..., Path],
                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    steps = commands(DOCS / "quickstart.md", "bash")
    assert [s[0] for s in steps] == ["extract", "info", "train", "eval", "predict"]
    assert "--split" in steps[0]
    make_photos(tmp_path / "photos", CLASSES)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for args in steps:
        res = CliRunner().invoke(app, args, catch_exceptions=False)
        assert res.exit_code == 0, f"{shlex.join(args)}\n{res.output}"
        outputs.append(res.output)
    assert "splits {'train': 24, 'val': 3, 'test': 3}" in outputs[1]
    out = Path(steps[2][steps[2].index("--out") + 1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_acc"] is not None and metrics["test_acc"] is not None
    assert (out / "adapter.json").is_file()
    assert "no validation split" not in outputs[2]
    assert f"accuracy {metrics['test_acc']:.4f}" in outputs[3]  # eval == training's test
    for name, n in CLASSES.items():  # every photo predicted
        assert all(f"photos/{name}/{i}.jpg" in outputs[4] for i in range(n))


def test_python_api_example_runs(tmp_path: Path, make_photos: Callable[..., Path]) -> None:
    (script,) = fenced(DOCS / "python-api.md", "python")
    (tmp_path / "example.py").write_text(script)
    make_photos(tmp_path / "photos", CLASSES)
    res = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "30 images stored" in res.stdout
    assert re.search(r"^val [\d.]+ test [\d.]+ runs/api-losa$", res.stdout, re.M), res.stdout
    assert re.search(r"^best \{'photos': \{'run': ", res.stdout, re.M), res.stdout
    assert "last loss" in res.stdout
    assert (tmp_path / "runs" / "api-sweep" / "best" / "photos" / "adapter.json").is_file()
