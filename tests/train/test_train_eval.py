"""One evaluation routine: ``losa-cache eval`` of a trained adapter gives exactly the
numbers ``train`` wrote into metrics.json (same engine, batch size and precision)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.train import train

runner = CliRunner()


def _eval(adapter: str, store: str, *args: str) -> dict:
    res = runner.invoke(app, ["eval", "--adapter", adapter, "--store", store, "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_eval_of_the_adapter_equals_the_metrics_train_wrote(
    make_cfg, micro_store: str, cache: str
) -> None:
    """amp auto (bf16 where the CPU has it) and batch 24 (not a divisor of the 64 test
    rows): eval must pick both up from the adapter to give the same numbers."""
    cfg = make_cfg(f"run-{cache}", amp="auto", batch_size=24, cache=cache)
    m = train(cfg, progress=False)
    test = _eval(cfg.out, micro_store)
    assert (test["accuracy"], test["loss"]) == (m["test_acc"], m["test_loss"])
    assert test["batch_size"] == 24 and test["amp"] == m["amp"]
    assert test["count"] == 64 and test["complete"] and test["scored_fraction"] == 1.0
    val = _eval(cfg.out, micro_store, "--split", "val")
    assert (val["accuracy"], val["loss"]) == (m["final_val_acc"], m["final_val_loss"])
    assert m["evals"][-1]["step"] == m["step"]  # the final val numbers are the final model's


def test_eval_batch_and_precision_can_be_overridden(make_cfg, micro_store: str) -> None:
    cfg = make_cfg("run", batch_size=16)
    m = train(cfg, progress=False)
    other = _eval(cfg.out, micro_store, "--batch-size", "7", "--amp", "fp32")
    assert other["batch_size"] == 7 and other["amp"] == "fp32"
    assert other["accuracy"] == pytest.approx(m["test_acc"], abs=1 / 64)
    assert other["loss"] == pytest.approx(m["test_loss"], rel=1e-4)
    res = runner.invoke(
        app, ["eval", "--adapter", cfg.out, "--store", micro_store, "--amp", "fp16"]
    )
    assert res.exit_code == 2 and "unknown amp 'fp16'" in res.stderr
    assert "choose one of" in res.stderr
    res = runner.invoke(
        app, ["eval", "--adapter", cfg.out, "--store", micro_store, "--batch-size", "0"]
    )
    assert res.exit_code == 2 and "--batch-size must be an integer >= 1, got 0" in res.stderr
