"""Every fix an error message suggests works on that store: each is applied to a copy of
the store and the refused training then runs."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app

EXTRACT = ["extract", "--model", "vit_micro", "--random-init", "--dataset", "demo", "--limit",
           "4", "--workers", "0", "--chunk-rows", "4", "--shard-rows", "8"]  # fmt: skip
FAST = ["--steps", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0"]


def cli(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def fixes(message: str) -> list[tuple[str, list[str]]]:
    """(kind, arguments) of every fix ``message`` suggests, in any order; all of them."""
    found = [
        ("extend", shlex.split(a))
        for a in re.findall(
            r"rerun the store's `losa-cache extract` command with `([^`]+)`", message
        )
    ]
    found += [
        ("subset", shlex.split(a))
        for a in re.findall(r"`losa-cache subset (\S+ NEW_STORE [^`]+)`", message)
    ]
    found += [("train", shlex.split(a)) for a in re.findall(r"\(`(--method [^`]+)`\)", message)]
    found += [
        ("train", a.split())
        for a in re.findall(r"with (--gather last|--gather-k \d+|--k-candidates [\d,]+)", message)
    ]
    suggested = len(re.split(r"[;,] or ", message.split("): ", 1)[1]))
    assert len(found) == suggested, (found, message)  # fmt: skip
    return found


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """blocks: every block of vit_micro; full: blocks + sum:4; sum4: the sum:4 subset of full."""
    root = tmp_path_factory.mktemp("fixes")
    for name, taps in (("blocks", "blocks"), ("full", "blocks,sum:4")):
        code, out = cli([*EXTRACT, "--store", str(root / name), "--taps", taps])
        assert code == 0, out
    code, out = cli(["subset", str(root / "full"), str(root / "sum4"), "--taps", "sum:4"])
    assert code == 0, out
    return {"blocks": root / "blocks", "full": root / "full", "sum4": root / "sum4"}


@pytest.mark.parametrize(
    ("store", "train", "words"),
    [
        ("blocks", ["--method", "mist"], "mist chooses k on val among [1, 3, 4]"),
        ("blocks", ["--method", "mist", "--gather-k", "4"], "mist reads the store tap sum:4"),
        ("sum4", ["--method", "losa"], "holds no blocks (it holds taps ['sum:4'])"),
    ],
)
def test_every_suggested_fix_works(stores: dict[str, Path], tmp_path: Path, store: str,
                                   train: list[str], words: str) -> None:  # fmt: skip
    def attempt(path: Path, extra: list[str], out: str) -> tuple[int, str]:
        args = ["train", "--store", str(path), *train, *FAST, "--out", str(tmp_path / out)]
        return cli([*args, *extra])

    code, message = attempt(stores[store], [], "refused")
    assert code != 0 and words in message, message
    message = message.strip().removeprefix("error: ")
    assert "\n" not in message and "..." not in message and "SRC" not in message
    for i, (kind, args) in enumerate(fixes(message)):
        path, extra = tmp_path / f"fixed{i}", []
        if kind == "extend":  # the store's own extract command, with the suggested flags
            shutil.copytree(stores[store], path)
            code, out = cli([*EXTRACT, "--store", str(path), *args])
            assert code == 0, out
        elif kind == "subset":
            code, out = cli(["subset", *[str(path) if a == "NEW_STORE" else a for a in args]])
            assert code == 0, out
        else:
            path, extra = stores[store], args
        code, out = attempt(path, extra, f"run{i}")
        assert code == 0, f"{kind} {args}: {out}"
