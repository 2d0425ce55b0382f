"""The train command through typer's CliRunner: JSON output, files written, clean errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from losa_cache.cli.train_cmds import train

app = typer.Typer()
app.command("train")(train)
app.command("noop")(lambda: None)  # two commands: `train` stays a subcommand
runner = CliRunner()

ARGS = [
    "train",
    "--rank",
    "4",
    "--layers",
    "evenly:2",
    "--steps",
    "4",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "--workers",
    "1",
]


def test_train_command_json(micro_store: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            *ARGS,
            "--store",
            micro_store,
            "--out",
            str(out),
            "--json",
            "--optimizer",
            "adamw",
            "--label-smoothing",
            "0.1",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["complete"] and m["step"] == 4 and m["plan"]["batch_size"] == 16
    assert (out / "adapter.json").is_file() and (out / "metrics.json").is_file()


def test_train_command_human_summary_and_resume(micro_store: str, tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", out, "--stop-at", "2"])
    assert res.exit_code == 0, res.output
    assert "rerun with --resume" in res.stdout
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", out, "--resume"])
    assert res.exit_code == 0, res.output
    assert "test acc" in res.stdout and "adapter" in res.stdout


def test_train_command_errors_are_one_line(micro_store: str, tmp_path: Path) -> None:
    res = runner.invoke(
        app, [*ARGS, "--store", micro_store, "--out", str(tmp_path / "x"), "--task", "nope"]
    )
    assert res.exit_code == 2
    assert "unknown task 'nope'" in res.stderr and "Traceback" not in res.stderr
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--rank", "0"])
    assert res.exit_code == 2 and "rank must be" in res.stderr


def test_docstring_has_an_example() -> None:
    assert "Example: losa-cache train" in (train.__doc__ or "")


def _click_params() -> dict[str, Any]:
    cmd: Any = typer.main.get_command(app)
    return {p.name: p for p in cmd.commands["train"].params}


def test_every_config_field_is_a_flag_with_its_help() -> None:
    """Flags are generated from TrainConfig: none missing, help and choices from metadata."""
    from dataclasses import fields

    from losa_cache.fields import choices_of
    from losa_cache.train import TrainConfig

    params = _click_params()
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).stdout
    for f in fields(TrainConfig):
        assert f.name in params, f.name
        valid = choices_of(f)
        listed = f" One of: {', '.join(valid)}." if valid else ""  # long lists: in the help
        assert params[f.name].help in (f.metadata["help"], f.metadata["help"] + listed), f.name
        if valid is not None:  # choices as enums: --help lists them
            assert "|".join(valid) in text or listed in params[f.name].help, f.name
    for name in (
        "--shuffle-buffer",
        "--momentum",
        "--log-every",
        "--checkpoint-every",
        "--pool",
        "--init-seed",
    ):
        assert name in text


def test_bad_numbers_are_one_line_errors(micro_store: str, tmp_path: Path) -> None:
    for flag, value, says in (
        ("--batch-size", "-5", "--batch-size must be an integer >= 1"),
        ("--batch-size", "0", "--batch-size must be an integer >= 1"),
        ("--seed", "-1", "--seed must be an integer >= 0"),
        ("--steps", "0", "--steps must be an integer >= 1"),
    ):
        res = runner.invoke(
            app, [*ARGS, "--store", micro_store, "--out", str(tmp_path / "b"), flag, value]
        )
        assert res.exit_code == 2 and says in res.stderr, (flag, value, res.output)
        assert len(res.stderr.strip().splitlines()) == 1


def test_internal_errors_keep_their_traceback_and_oom_names_the_fix(
    micro_store: str, tmp_path: Path, monkeypatch
) -> None:
    import torch

    import losa_cache.train

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(losa_cache.train, "train", boom)
    args = [*ARGS, "--store", micro_store, "--out", str(tmp_path / "x")]
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)

    def oom(*a: object, **k: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(losa_cache.train, "train", oom)
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "--batch-size" in res.stderr and "--cache none" in res.stderr
    assert "fewer configs per group" in res.stderr


def test_cached_fp32_store_equals_live_through_the_cli(micro_store: str, tmp_path: Path) -> None:
    """The default layout and order, 20 steps: the adapters agree to float rounding."""
    from safetensors.torch import load_file

    common = [
        "train",
        "--method",
        "losa",
        "--rank",
        "4",
        "--layers",
        "evenly:2",
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--amp",
        "fp32",
        "--json",
    ]  # auto is bf16 on AVX512-BF16 CPUs: live would differ
    a = runner.invoke(app, [*common, "--store", micro_store, "--out", str(tmp_path / "c")])
    b = runner.invoke(
        app,
        [
            *common,
            "--live",
            "--model",
            "vit_micro",
            "--random-init",
            "--dataset",
            "demo",
            "--limit",
            "64",
            "--out",
            str(tmp_path / "l"),
        ],
    )
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    wa = load_file(str(tmp_path / "c" / "adapter.safetensors"))
    wb = load_file(str(tmp_path / "l" / "adapter.safetensors"))
    for key in wa:
        scale = max(1e-6, float(wa[key].abs().max()))
        assert float((wa[key] - wb[key]).abs().max()) <= 1e-4 * scale + 1e-6, key


def test_a_store_error_while_reading_is_one_line(
    micro_store: str, tmp_path: Path, monkeypatch
) -> None:
    """A damaged store found mid-read (e.g. a checksum mismatch) stops with one line."""
    from losa_cache.store import StoreError
    from losa_cache.store.store import FeatureArray

    def damaged(self: object, *a: object, **k: object) -> int:
        raise StoreError("shard 0 of block 3 fails its checksum; run losa-cache verify --repair")

    monkeypatch.setattr(FeatureArray, "scatter_rows", damaged)
    res = runner.invoke(
        app,
        [
            *ARGS,
            "--store",
            micro_store,
            "--out",
            str(tmp_path / "d"),
            "--cache",
            "none",
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and "fails its checksum" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # --quiet: no progress, the error alone


def test_a_truncated_checkpoint_on_resume_is_one_line(micro_store: str, tmp_path: Path) -> None:
    """A checkpoint cut short on disk: one line naming the file and the fix, nothing changed."""
    out = tmp_path / "run"
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", str(out), "--stop-at", "2"])
    assert res.exit_code == 0, res.output
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = runner.invoke(app, [*ARGS, "--store", micro_store, "--out", str(out), "--resume"])
    assert res.exit_code == 2, res.output
    assert str(ckpt) in res.stderr and "damaged or incomplete" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
