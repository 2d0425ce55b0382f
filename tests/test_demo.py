"""`losa-cache demo --tiny`: the README's main job end to end, on the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from losa_cache.adapter import load_adapter
from losa_cache.cli.main import app
from losa_cache.store import open_store


def test_demo_tiny_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--tiny", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    store = open_store(r["store"])
    assert store.complete and store.fingerprint["model"] == "losa_demo_vit"
    assert store.fingerprint["weights_source"] == "embedded"
    assert set(r["runs"]) == {"linear", "losa"}
    assert r["runs"]["linear"]["learned_params"] == 0 < r["runs"]["losa"]["learned_params"]
    adapter = load_adapter(r["runs"]["losa"]["adapter"])
    assert adapter.fingerprint["weights_sha256"] == store.fingerprint["weights_sha256"]
    assert len(r["predictions"]) == 6 and all("predicted" in p for p in r["predictions"])
    # a second run reuses the store (extract once) and trains afresh
    again = json.loads(
        CliRunner().invoke(app, ["demo", "--out", str(out), "--tiny", "--json"]).stdout
    )
    assert again["extract"]["written"] == 0
    assert again["runs"]["losa"]["test_acc"] == r["runs"]["losa"]["test_acc"]  # deterministic


def test_demo_human_output_has_the_comparison_table(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--tiny"])
    assert result.exit_code == 0, result.output
    assert "learned params" in result.output and "losa" in result.output
    assert "predictions of the LoSA adapter" in result.output
