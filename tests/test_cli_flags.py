"""Every `--flag` a message or help text names is a real option, and ExtractConfig is whole.

Messages tell users what to type; a flag that does not exist (``--max-pixels`` before it
was added, ``data_root=`` for a CLI user) sends them nowhere.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import typer
import typer.main

from losa_cache.checks import flag
from losa_cache.cli.main import app
from losa_cache.extract import ExtractConfig

REPO = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _options() -> dict[str, set[str]]:
    """Command path -> its long options, over the whole command tree."""
    out: dict[str, set[str]] = {}

    def walk(cmd, path: str) -> None:
        out[path] = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
        if hasattr(cmd, "list_commands"):  # a group: its commands, lazy ones loaded
            ctx = typer.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    return out


def _named_flags() -> dict[str, set[str]]:
    """Flag -> the source files whose string literals (messages, help) name it."""
    named: dict[str, set[str]] = {}
    files = [*(REPO / "losa_cache").rglob("*.py"), *(REPO / "cli").glob("*.py")]
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in FLAG.findall(node.value):
                    named.setdefault(name, set()).add(str(file.relative_to(REPO)))
    return named


def test_every_flag_named_in_a_message_exists() -> None:
    real = set().union(*_options().values()) | {"--help"}
    missing = {f: sorted(files) for f, files in _named_flags().items() if f not in real}
    assert not missing, f"messages name options no command has: {missing}"


def test_every_extract_config_field_is_an_extract_option() -> None:
    """Its range checks name ``--<field>``: that must be an option of `extract`."""
    extract = _options()["extract"]
    fields = {flag(f.name) for f in dataclasses.fields(ExtractConfig)}
    assert fields - extract == set()


def _helps(command: str) -> dict[str, str]:
    """Long option -> its help text, for one command (lazy ones loaded)."""
    from losa_cache.cli.main import load_command

    return {o: p.help or "" for p in load_command(command).params for o in p.opts}


def test_every_train_field_is_a_train_and_sweep_flag_with_one_help() -> None:
    """train and sweep share every name and meaning: each TrainConfig field is a flag of
    both, whose help is the field's (a sweep's grid flags and a few sweep notes add to it,
    never replace it). ``--out``/``--resume`` name the sweep's own folder."""
    from losa_cache.sweep.config import METHOD_FIELDS, NOT_SHARED
    from losa_cache.train import TrainConfig

    train, sweep = _helps("train"), _helps("sweep")
    assert set(METHOD_FIELDS) >= {"rank", "width", "gather_k", "hidden", "lora_targets"}
    for f in dataclasses.fields(TrainConfig):
        help = f.metadata["help"]
        assert train[flag(f.name)].startswith(help), f.name
        if f.name not in NOT_SHARED:
            assert sweep[flag(f.name)].startswith(help), f.name
    for name in (
        "momentum",
        "warmup_steps",
        "label_smoothing",
        "stop_at",
        "width",
        "rank",
        "prompt_tokens",
        "adapter_scale",
        "hidden",
    ):
        assert sweep[flag(name)] == train[flag(name)]  # as in train, word for word
