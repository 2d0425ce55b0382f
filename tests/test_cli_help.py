"""``losa-cache --help`` loads neither torch nor zarr (train/sweep/report load on use),
and ``models`` builds its meta-device architectures without timm's weight init."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from losa_cache.cli import main
from tests.test_lean_imports import loaded_after

HEAVY = {"torch", "zarr", "numpy", "timm", "matplotlib"}


def test_top_level_help_imports_no_heavy_module() -> None:
    (modules,) = loaded_after(["--help"])
    assert "typer" in modules and not modules & HEAVY


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

