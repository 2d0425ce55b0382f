"""train(): outputs, determinism, exact resume, NaN handling and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from losa_cache.adapter import load_adapter
from losa_cache.store import StoreError, open_store
from losa_cache.train import NonFiniteLossError, StoreReader, labelled_rows, train


def state(out: str) -> dict:
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)


def test_run_writes_metrics_checkpoint_and_adapter(make_cfg, micro_store: str) -> None:
    cfg = make_cfg()
    m = train(cfg, progress=False)
    out = Path(cfg.out)
    assert m["complete"] and m["step"] == 6 and m["layers"] == [1, 3]
    assert json.loads((out / "metrics.json").read_text())["test_acc"] == m["test_acc"]
    assert [e["step"] for e in m["evals"]] == [3, 6] and m["best_val_acc"] is not None
    assert m["learned_params"] > 0 and m["images_per_s"] > 0 and m["bytes_read"] > 0
    assert m["peak_memory_bytes"] >= 0 and m["peak_memory_kind"]  # RSS growth may be 0
    assert m["feed"]["cache"]["mode"] == "ram"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(1, 7))
    assert {"loss", "acc", "lr", "img_s", "epoch"} <= set(train_recs[0])
    # the adapter reproduces the trained model's logits on cached features
    adapter = load_adapter(out)
    assert adapter.meta["task"] == "position" and adapter.layers == [1, 3]
    store = open_store(micro_store)
    rows, labels = labelled_rows(store, "test", None)
    with StoreReader(store, rows, labels, (1, 3), 64) as reader:
        feats, _, _ = next(iter(reader.eval_batches()))
    model = adapter.model
    model.load_state_dict(state(cfg.out)["model"])
    assert torch.equal(adapter.model(feats), model(feats))


def test_same_seed_same_weights_linear_probe(make_cfg) -> None:
    a = make_cfg("a", method="linear", optimizer="adamw")
    b = make_cfg("b", method="linear", optimizer="adamw", cache="none")
    train(a, progress=False)
    train(b, progress=False)
    wa, wb = state(a.out)["model"], state(b.out)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
def test_resume_continues_bit_for_bit(make_cfg, amp: str) -> None:
    """Also in bf16: fp32 master weights and optimizer state checkpointed, bf16 compute."""
    straight = make_cfg("straight", steps=10, eval_every=5, amp=amp)
    assert train(straight, progress=False)["amp"] == amp
    split = make_cfg("split", steps=10, eval_every=5, stop_at=4, cache="none", amp=amp)
    first = train(split, progress=False)
    assert not first["complete"] and first["step"] == 4 and "adapter" not in first
    assert all(v.dtype == torch.float32 for v in state(split.out)["model"].values())
    second = train(make_cfg("split", steps=10, eval_every=5, resume=True, amp=amp), progress=False)
    assert second["complete"] and second["step"] == 10
    a, b = state(straight.out), state(split.out)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    logs = [
        [json.loads(x) for x in (Path(c.out) / "metrics.jsonl").read_text().splitlines()]
        for c in (straight, split)
    ]
    losses = [[r["loss"] for r in log if r["kind"] == "train"] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_resume_refuses_a_different_run(make_cfg) -> None:
    train(make_cfg("r", stop_at=2), progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(make_cfg("r"), progress=False)
    with pytest.raises(ValueError, match=r"different \['rank'\]"):
        train(make_cfg("r", rank=8, resume=True), progress=False)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint\.pt"):
        train(make_cfg("nothing", resume=True), progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(make_cfg) -> None:
    cfg = make_cfg("nan", method="linear", lr=1e30, checkpoint_every=1, steps=20)
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint \(step (\d+)\)") as err:
        train(cfg, progress=False)
    kept = state(cfg.out)
    assert f"step {kept['step']})" in str(err.value) and kept["step"] < 20
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"task": "nope"}, StoreError, r"unknown task 'nope'; this store has \['position'\]"),
        ({"val_split": "dev"}, StoreError, r"unknown val split 'dev'; available splits: \['train'"),
        ({"layers": "0,7"}, ValueError, "out of range for a 4-block backbone"),
        ({"layers": "0,1"}, ValueError, "must include the last block"),
    ],
)
def test_clear_errors(make_cfg, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        train(make_cfg(**kwargs), progress=False)


def test_store_missing_layers_lists_the_available_ones(make_cfg, fp16_store: str) -> None:
    with pytest.raises(StoreError, match=r"holds blocks \[1, 3\] of 4"):
        train(make_cfg(store=fp16_store, layers="all"), progress=False)
    m = train(make_cfg("fp16", store=fp16_store, layers="store", steps=2), progress=False)
    assert m["layers"] == [1, 3] and m["complete"]  # --layers store: what the store holds


def test_resuming_a_finished_checkpoint_only_finishes(make_cfg) -> None:
    """A crash after the last checkpoint, before metrics.json: --resume ends the run."""
    first = train(make_cfg("end", steps=4, eval_every=2), progress=False)
    again = train(make_cfg("end", steps=4, eval_every=2, resume=True), progress=False)
    assert again["complete"] and again["step"] == 4
    assert again["test_acc"] == first["test_acc"] and again["evals"] == first["evals"]
    records = (Path(make_cfg("end").out) / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, records) if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
