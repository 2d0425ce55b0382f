"""``losa-cache --help`` loads neither torch nor zarr (train/sweep/report load on use),
and ``models`` builds its meta-device architectures without timm's weight init."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from losa_cache.cli import main
from tests.test_lean_imports import loaded_after

HEAVY = {"torch", "zarr", "numpy", "timm", "matplotlib"}


def test_top_level_help_imports_no_heavy_module() -> None:
    """Nor does ``extract --help``: ExtractConfig, which generates its options, lives in a
    module that imports no torch (losa_cache/extract_config.py)."""
    top, extract = loaded_after(["--help"], ["extract", "--help"])
    assert "typer" in top and not top & HEAVY
    assert "losa_cache" in extract and not extract & HEAVY


def test_help_lists_every_command_with_its_own_first_line() -> None:
    res = CliRunner().invoke(main.app, ["--help"], env={"COLUMNS": "300"})
    assert res.exit_code == 0
    for name in main.ORDER:
        assert f" {name} " in res.stdout, name
    for name, (_, _, short) in main.LAZY.items():  # the listed text is the docstring's
        doc = (main.load_command(name).help or "").strip().splitlines()[0]
        assert doc == short, name


def test_lazy_commands_run_and_show_their_options() -> None:
    res = CliRunner().invoke(main.app, ["sweep", "--help"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "--no-costs" in res.stdout and "--quiet" in res.stdout
    res = CliRunner().invoke(main.app, ["nope"])
    assert res.exit_code == 2


def test_meta_architectures_skip_the_weight_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's trunc_normal_ init run on meta tensors was most of `losa-cache models`."""
    import timm.models.vision_transformer as vt

    from losa_cache.backbone.registry import create_architecture

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("weight init ran on the meta device")

    monkeypatch.setattr(vt, "trunc_normal_", boom)
    net = create_architecture("vit_b", device="meta")
    assert sum(p.numel() for p in net.parameters()) > 80_000_000
    with pytest.raises(AssertionError, match="weight init"):
        create_architecture("vit_micro", device="cpu")  # real weights are still drawn


def _commands() -> list[tuple[list[str], object]]:
    """(command path, click command) for every command and sub-command."""
    import typer
    import typer.main

    out: list[tuple[list[str], object]] = []

    def walk(cmd: object, path: list[str]) -> None:
        out.append((path, cmd))
        if hasattr(cmd, "list_commands"):
            ctx = typer.Context(cmd)
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])

    walk(typer.main.get_command(main.app), [])
    return out


def test_help_at_80_columns_cuts_no_flag_name() -> None:
    """Every option of every command appears whole in its ``--help`` at 80 columns (rich
    shortens a name that does not fit: ``--checkpoint-eve…``)."""
    runner = CliRunner()
    for path, cmd in _commands():
        res = runner.invoke(main.app, [*path, "--help"], env={"COLUMNS": "80"})
        assert res.exit_code == 0, path
        assert max(map(len, res.stdout.splitlines())) <= 80, path
        names = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
        cut = sorted(
            n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", res.stdout)
        )
        assert not cut, f"{' '.join(path)} --help cuts {cut}"


def test_train_help_shows_the_core_options_first_then_panels() -> None:
    res = CliRunner().invoke(main.app, ["train", "--help"], env={"COLUMNS": "80"})
    titles = re.findall(r"╭─ ([A-Za-z ]+) ─", res.stdout)
    assert titles[0] == "Options" and {"Method", "Optimisation", "Live video"} <= set(titles)
    core = res.stdout.split("╭─ Method")[0]
    assert all(f in core for f in ("--store", "--method", "--steps", "--lr", "--out"))
    assert "--width" not in core and "--max-memory" not in core


def test_version_prints_the_installed_version_without_loading_torch() -> None:
    from importlib.metadata import version

    res = CliRunner().invoke(main.app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"losa-cache {version('losa-cache')}"
    (modules,) = loaded_after(["--version"])
    assert not modules & HEAVY


#: Options a command adds to its configs' fields (where a store is, how to print).
OUTPUT_OPTIONS = {"storage_options", "json_out", "quiet", "csv_out"}
#: Commands with no config: models (only --json) and report (reads a sweep folder).
NOT_GENERATED = {("models",), ("report",)}


def test_every_command_is_generated_and_its_help_is_its_fields() -> None:
    """Each option of every command is a config field whose metadata help is the option's
    help (a choice list may follow), so no help can drift from its config; only the output
    options are the command's own. Every command shows an example and has --json."""
    import inspect
    import typing

    from losa_cache.fields import choices_of

    leaves = [(tuple(path), cmd) for path, cmd in _commands()
              if path and not hasattr(cmd, "list_commands")]  # fmt: skip
    assert {p for p, _ in leaves} >= {("extract",), ("plan",), ("eval",), ("predict",),
                                      ("tasks", "add"), ("verify",), ("import",)}  # fmt: skip
    for path, cmd in leaves:
        assert "Example" in (cmd.help or ""), f"{' '.join(path)} --help shows no example"
        assert any("--json" in p.opts for p in cmd.params), f"{' '.join(path)} has no --json"
        if path in NOT_GENERATED:
            continue
        original = getattr(cmd.callback, "__wrapped__", None)
        assert original is not None and hasattr(original, "__signature__"), path
        helps = {p.name: p.help for p in cmd.params}
        fields = 0
        for name, par in inspect.signature(original).parameters.items():
            info = typing.get_args(par.annotation)[1]
            f = getattr(info, "config_field", None)
            if f is None:
                assert name in OUTPUT_OPTIONS, f"{' '.join(path)}: --{name} is not a field"
                continue
            fields += 1
            want = f.metadata["help"]
            valid = choices_of(f)
            assert helps[name] in (want, f"{want} One of: {', '.join(valid or [])}."), (path, name)
        assert fields, path
