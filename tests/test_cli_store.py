"""The store commands through typer's CliRunner, checked against the files they write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import open_store

runner = CliRunner()


def run(*args: str, ok: bool = True) -> str:
    result = runner.invoke(app, list(args))
    assert (result.exit_code == 0) == ok, result.output
    return result.stdout if ok else result.stderr  # results on stdout, errors on stderr


def test_every_command_has_help_with_an_example() -> None:
    for cmd in ["models", "plan", "extract", "info", "tasks add", "tasks list"]:
        out = run(*cmd.split(), "--help")
        assert "Example:" in out, cmd


def test_models_json_lists_aliases() -> None:
    rows = json.loads(run("models", "--json"))
    g = next(r for r in rows if r["model"] == "vit_g")
    assert g["bytes_per_image_layer_fp16"] == 257 * 1408 * 2 and g["depth"] == 40


def test_plan_vit_g_inat2018_matches_design_arithmetic() -> None:
    p = json.loads(
        run(
            "plan",
            "--model",
            "vit_g",
            "--dataset",
            "inat2018",
            "--layers",
            "all",
            "--dtype",
            "fp16",
            "--json",
            "--no-measure",
        )
    )
    assert p["splits"]["train"] == 437_513
    assert p["bytes_by_split"]["train"] == pytest.approx(12.6e12, rel=0.02)  # DESIGN.md
    assert p["bytes_total"] == sum(p["bytes_by_split"].values())
    assert p["backbone_gflops_per_image"] == pytest.approx(2 * 1.0e9 * 257 / 1e9, rel=0.1)


def test_plan_counts_learned_params_without_weights() -> None:
    p = json.loads(
        run(
            "plan",
            "--model",
            "vit_g",
            "--dataset",
            "inat2018",
            "--rank",
            "64",
            "--layers",
            "all",
            "--json",
            "--no-measure",
        )
    )
    assert round(p["learned_params"] / 1e6, 3) == 4.298


def test_plan_estimates_time_on_this_device() -> None:
    p = json.loads(run("plan", "--model", "vit_micro", "--dataset", "demo", "--json"))
    assert p["measured_matmul_tflops"] > 0 and p["extract_seconds_estimate"] > 0


def test_extract_info_tasks_round_trip(tmp_path: Path) -> None:
    store = str(tmp_path / "s.zarr")
    out = json.loads(
        run(
            "extract",
            "--model",
            "vit_micro",
            "--random-init",
            "--dataset",
            "demo",
            "--store",
            store,
            "--limit",
            "8",
            "--workers",
            "0",
            "--json",
        )
    )
    assert out["written"] == 24 and not out["resumed"]
    info = json.loads(run("info", store, "--json"))
    assert info["complete"] and info["num_images"] == 24 and info["layers"] == [0, 1, 2, 3]
    assert info["fingerprint"]["model"] == "losa_micro_vit"
    assert info["compression_ratio"] is None  # codec none: nothing compressed
    assert info["bytes_stored"] > info["bytes_logical"] and "padding" in info["size_note"]
    assert "complete" in run("info", store)
    # attach a second labelling: by class name, only some rows
    sources = open_store(store).sources
    lines = [f"{s} {'odd' if i % 2 else 'even'}" for i, s in enumerate(sources) if i < 10]
    (tmp_path / "parity.txt").write_text("\n".join(lines) + "\n")
    before = open_store(store).features(3)[:]
    run("tasks", "add", store, "--name", "parity", "--labels", str(tmp_path / "parity.txt"))
    s = open_store(store)
    assert s.tasks[-1] == "parity" and s.classes("parity") == ["even", "odd"]
    labels = s.labels("parity")
    assert list(labels[:4]) == [0, 1, 0, 1] and (labels[10:] == -1).all()
    np.testing.assert_array_equal(s.features(3)[:], before)  # features untouched
    listed = json.loads(run("tasks", "list", store, "--json"))
    assert {t["name"]: t["labelled"] for t in listed}["parity"] == 10


def test_bad_inputs_get_one_clear_line(tmp_path: Path) -> None:
    out = run(
        "extract",
        "--model",
        "vit_micro",
        "--dataset",
        "demo",
        "--store",
        str(tmp_path / "x.zarr"),
        ok=False,
    )
    assert "--random-init" in out and "Traceback" not in out
    out = run("info", str(tmp_path / "missing.zarr"), ok=False)
    assert "no losa-cache store" in out
    out = run(
        "extract",
        "--model",
        "vit_micro",
        "--random-init",
        "--dataset",
        "nope:thing",
        "--store",
        str(tmp_path / "y.zarr"),
        ok=False,
    )
    assert "imagefolder:" in out
    out = run(
        "extract",
        "--model",
        "vit_micro",
        "--random-init",
        "--dataset",
        "demo",
        "--store",
        str(tmp_path / "z.zarr"),
        "--layers",
        "7",
        ok=False,
    )
    assert "range" in out or "depth" in out


def test_tasks_add_unknown_source_is_refused(micro_store: str, tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("not/a/row.png 1\n")
    out = run(
        "tasks", "add", micro_store, "--name", "t", "--labels", str(tmp_path / "l.txt"), ok=False
    )
    assert "not rows of this store" in out and "demo://" in out
