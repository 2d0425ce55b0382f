"""The store reader's host memory is bounded by --max-memory: measured (peak RSS of a
training process), reported in the metrics, and refused in one line when too small."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from losa_cache.train.reader import DEFAULT_MAX_MEMORY, reader_memory

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20

CHILD = r"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from losa_cache.train import TrainConfig, train
kwargs = json.loads(sys.argv[1])
def rss(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
# a one-step run first: lazy imports and allocator pools are not the reader's memory
train(TrainConfig(**{**kwargs, "steps": 1, "out": kwargs["out"] + "-warm"}), progress=False)
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
base = rss("VmRSS:")
metrics = train(TrainConfig(**kwargs), progress=False)
print(json.dumps({"base": base, "peak": rss("VmHWM:"), "feed": metrics["feed"]}))
"""


@pytest.fixture(scope="module")
def big_store(micro_store: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The micro store's rows 32 times over (6,144 rows of 8.5 KiB, all in train)."""
    spec = importlib.util.spec_from_file_location(
        "bench_train_mem", REPO / "benchmarks" / "train.py"
    )
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench.tile_store(micro_store, str(tmp_path_factory.mktemp("big") / "b.zarr"), 32)


def _child(cfg: dict) -> dict:
    # a fixed mmap threshold: freed windows go back to the system (glibc's moving
    # threshold would keep them in the heap, and RSS would not show what is held)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    res = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streamed_training_stays_within_the_memory_budget(big_store: str, tmp_path: Path) -> None:
    # windows of 2,048 rows are 17 MiB: 40 MiB holds the one served and one read ahead
    # (3 windows, the default read-ahead here, grow RSS by 55 MiB; the reader before the
    # budget held 4 and the rest of the last one)
    cfg = {
        "store": big_store,
        "out": str(tmp_path / "r"),
        "cache": "none",
        "rank": 2,
        "layers": "all",
        "batch_size": 256,
        "shuffle_buffer": 2048,
        "steps": 30,
        "max_memory": 40,
        "workers": 2,
        "device": "cpu",
        "amp": "fp32",
        "val_split": "none",
        "test_split": "none",
        "log_every": 10,
    }
    out = _child(cfg)
    mem = out["feed"]["reader_memory"]
    assert mem["max_memory"] == 40 * MiB and mem["read_ahead"] == 1
    assert mem["bytes_held"] <= 40 * MiB < 3 * mem["window_bytes"]
    grown = out["peak"] - out["base"]
    assert grown <= 40 * MiB + 8 * MiB, f"peak RSS grew {grown / MiB:.1f} MiB"


def test_a_budget_below_one_window_is_refused_naming_what_is_needed() -> None:
    with pytest.raises(
        ValueError,
        match=r"--max-memory 1 MiB cannot hold one shuffle window "
        r"of 2048 rows \(17\.0 MiB\).*>= 20 \(MiB\)",
    ):
        reader_memory(2048, 256, 8704, 1 * MiB, 2)


def test_the_budget_bounds_read_ahead_and_the_default_holds_one_window_ahead() -> None:
    row = 1 << 20
    assert reader_memory(64, 16, row, None, 2)["read_ahead"] == 2  # 64 MiB windows in 1 GiB
    big = reader_memory(1024, 32, row, None, 2)  # 1 GiB windows: default grows to 2 of them
    assert big["read_ahead"] == 1 and big["max_memory"] == 2 * 1024 * row + 32 * row
    assert reader_memory(64, 16, row, 64 * row + 16 * row, 2)["read_ahead"] == 0
    assert reader_memory(64, 16, row, 2 * 64 * row + 16 * row, 2)["read_ahead"] == 1
    assert reader_memory(1, 1, 1, None, 2)["max_memory"] == DEFAULT_MAX_MEMORY


def test_the_budget_never_changes_the_batches(make_cfg, big_store: str) -> None:
    """Only the read-ahead depends on --max-memory: the weights are bit-identical (windows
    of 256 rows are 2.1 MiB: 3 MiB reads none ahead, the default two)."""
    import torch

    from losa_cache.train import train

    common = {
        "store": big_store,
        "cache": "none",
        "shuffle_buffer": 256,
        "batch_size": 64,
        "layers": "all",
        "steps": 8,
        "val_split": "none",
        "test_split": "none",
    }
    ref, small = make_cfg("a", **common), make_cfg("b", **common, max_memory=3)
    ma, mb = train(ref, progress=False), train(small, progress=False)
    assert (
        ma["feed"]["reader_memory"]["read_ahead"],
        mb["feed"]["reader_memory"]["read_ahead"],
    ) == (2, 0)
    wa = torch.load(Path(ref.out) / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(Path(small.out) / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_evaluation_reads_within_what_the_training_reader_leaves(
    micro_store: str, tmp_path: Path, monkeypatch
) -> None:
    """Evaluation runs while the training reader holds its windows: its windows are sized
    from the budget minus those bytes (it used to take a whole budget of its own), and the
    numbers do not depend on it (any window gives the same batches)."""
    from losa_cache.train import TrainConfig, train
    from losa_cache.train.engine import Inputs

    seen: list[tuple[int, int, int]] = []
    plain = Inputs.eval_window

    def spy(self: Inputs, rows: object, layers: object) -> int:
        window = plain(self, rows, layers)
        seen.append((self.held, window, self.source.info.feed_bytes(layers)))
        return window

    cfg = dict(
        store=micro_store,
        cache="none",
        rank=2,
        layers="all",
        batch_size=8,
        shuffle_buffer=64,
        steps=8,
        eval_every=4,
        max_memory=1,
        workers=0,
        device="cpu",
        amp="fp32",
    )
    alone = train(TrainConfig(**cfg, out=str(tmp_path / "a")), progress=False)
    monkeypatch.setattr(Inputs, "eval_window", spy)
    again = train(TrainConfig(**cfg, out=str(tmp_path / "b")), progress=False)
    during = [(held, w, rb) for held, w, rb in seen if held]
    assert during, "no evaluation ran beside the training reader"
    for held, window, row_bytes in during:
        assert 4 * window * row_bytes <= MiB - held or window == 1
        assert window < plain_window(row_bytes)
    for key in ("test_acc", "test_loss", "final_val_acc", "final_val_loss", "evals"):
        assert again[key] == alone[key], key


def plain_window(row_bytes: int) -> int:
    """The eval window a whole 1 MiB budget would give 64 rows (before the fix)."""
    return max(1, min(64, MiB // (4 * row_bytes)))
