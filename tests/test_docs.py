"""Every command in README.md and docs/*.md works as written.

Fenced blocks say how a command is checked:

- ```` ```bash ````: run here, in document order, in one sandbox folder per document that
  holds ``photos/<class>/*.jpg`` (a small class-folder data set, the quickstart's input).
  A ``losa-cache`` line must exit 0; the other lines may only be set-up commands that a
  test cannot run (``make``, ``pip``, ...), listed in :data:`NOT_RUN`.
- a block without a language whose lines start with ``$ losa-cache``: an example with its
  output; the command is run the same way.
- ```` ```sh ````: a template for the user's own files (checkpoints, data sets this machine
  does not have): every ``losa-cache`` line must parse (command, flags, flag values), but
  is not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = ("make ", "pip ", "python -m pip ", "git ", "cd ", "export ", "tar ")
#: documents whose commands a test of their own runs, with checks of what they print
RUN_ELSEWHERE = {"quickstart.md": "tests/test_docs_quickstart.py"}
_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]


def command_lines(body: str, *, prompt: bool) -> list[str]:
    """Commands of a block: continuations joined, ``;``-separated commands split, comments
    dropped; with ``prompt`` only ``$ ``-prefixed lines (the rest is output)."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if prompt:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        words = shlex.split(line, comments=True)
        if not words:
            continue
        out.extend(part.strip() for part in shlex.join(words).split(" ';' ") if part.strip())
    return out


def doc_commands(path: Path) -> tuple[list[str], list[str]]:
    """(commands to run, templates to parse) of one document."""
    run: list[str] = []
    parse: list[str] = []
    for lang, body in blocks(path.read_text(encoding="utf-8")):
        if lang == "bash":
            run += command_lines(body, prompt=False)
        elif lang == "":
            run += [c for c in command_lines(body, prompt=True) if c.startswith("losa-cache")]
        elif lang == "sh":
            parse += [c for c in command_lines(body, prompt=False) if c.startswith("losa-cache")]
    return run, parse


def _cli() -> typer.core.TyperGroup:
    from losa_cache.cli.main import app

    return typer.main.get_command(app)


def parse_only(command: str) -> None:
    """Parse ``losa-cache ...`` as the CLI would, without running it: an unknown command,
    flag or bad flag value raises; paths that do not exist here are fine (templates)."""
    group = _cli()
    args = shlex.split(command)[1:]
    ctx = group.make_context("losa-cache", list(args), resilient_parsing=False)
    while hasattr(group, "get_command"):  # a group (typer vendors its own click)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        assert rest, f"{command!r}: no command after {group.name!r}"
        sub = group.get_command(ctx, rest[0])
        assert sub is not None, f"{command!r}: no command {rest[0]!r}"
        try:
            ctx = sub.make_context(rest[0], rest[1:], parent=ctx)
        except typer.BadParameter as err:
            if type(getattr(err.param, "type", None)).__name__ != "Path":
                raise
            return
        group = sub


def write_photos(root: Path, classes: int = 3, per_class: int = 16) -> Path:
    """photos/<class>/NNN.jpg: the demo data set's pictures, learnable by class."""
    from losa_cache.data.demo import render

    rng = np.random.default_rng(0)
    for label in range(classes):
        for i in range(per_class):
            path = root / "photos" / f"class_{label}" / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render(rng, label)).save(path, quality=95)
    return root / "photos"


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


def test_every_doc_has_commands_the_test_sees() -> None:
    """The parser finds the README's quickstart: a broken fence would make the test vacuous."""
    run, _ = doc_commands(REPO / "README.md")
    assert any(c.startswith("losa-cache extract") for c in run)
    assert any(c.startswith("losa-cache train") for c in run)


@pytest.mark.parametrize("path", DOCS, ids=_ids(DOCS))
def test_templates_parse(path: Path) -> None:
    _, parse = doc_commands(path)
    for command in parse:
        parse_only(command)


def _runnable(path: Path) -> list[str]:
    return [c for c in doc_commands(path)[0] if not c.startswith(NOT_RUN)]


#: documents with commands this test runs (the rest hold templates and output only)
RUNNABLE = [p for p in DOCS if _runnable(p) and p.name not in RUN_ELSEWHERE]


def test_the_runnable_documents_are_found() -> None:
    assert REPO / "README.md" in RUNNABLE


@pytest.mark.parametrize("path", RUNNABLE, ids=_ids(RUNNABLE))
def test_commands_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _runnable(path)
    for command in commands:
        assert command.startswith("losa-cache "), (
            f"{path.name}: {command!r} is neither a losa-cache command nor a set-up command "
            f"({', '.join(NOT_RUN)}): put it in a ```sh block if it is a template"
        )
    write_photos(tmp_path)
    monkeypatch.chdir(tmp_path)
    from losa_cache.cli.main import app

    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, shlex.split(command)[1:], catch_exceptions=False)
        assert result.exit_code == 0, f"{path.name}: {command}\n{result.output}"
