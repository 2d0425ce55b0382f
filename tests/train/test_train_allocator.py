"""CPU training from a store sets glibc's mmap threshold (freed large buffers go back to
the kernel instead of staying in the heap), and can be turned off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from losa_cache.train import allocator

GLIBC = allocator._glibc() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")

# 16 MiB allocated, touched and freed twice: glibc's default serves the second one from
# its heap (the first free raised its mmap threshold to 16 MiB) and keeps it after free;
# printed: the threshold set and the MiB the second cycle left in RSS
RETAINED = """
import sys
import numpy as np
from losa_cache.train.allocator import tune_allocator
state = tune_allocator()
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
a = np.ones(16 << 20, np.uint8)
del a
base = rss()
a = np.ones(16 << 20, np.uint8)
del a
print(state["mmap_threshold"], (rss() - base) >> 20)
"""


def _retained(env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", RETAINED],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    ).stdout.split()
    return out[0], int(out[1])


@needs_glibc
def test_large_buffers_go_back_to_the_kernel_when_freed() -> None:
    """The allocate-free cycle's RSS after the free (MiB over before the allocation)."""
    threshold, kept = _retained({})
    assert threshold == str(allocator.MMAP_THRESHOLD) and kept < 4
    threshold, kept = _retained({allocator.ENV: "off"})
    assert threshold == "None" and kept >= 12  # glibc's default: held in the heap


def test_off_and_non_glibc_leave_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, "off")
    assert allocator.tune_allocator()["mmap_threshold"] is None
    monkeypatch.setenv(allocator.ENV, "auto")
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # macOS, musl
    state = allocator.tune_allocator()
    assert state["mmap_threshold"] is None and "not Linux with glibc" in state["why"]
    assert allocator._applied is None
    monkeypatch.setenv(allocator.ENV, "fast")
    with pytest.raises(ValueError, match=r"LOSA_CACHE_MALLOC='fast': choose auto .*, on or off"):
        allocator.tune_allocator()


@needs_glibc
def test_cpu_training_from_a_store_records_the_setting(fp16_store: str, tmp_path) -> None:
    from losa_cache.train import TrainConfig, train

    cfg = TrainConfig(
        store=fp16_store,
        out=str(tmp_path / "run"),
        method="linear",
        steps=1,
        batch_size=8,
        device="cpu",
        workers=0,
        max_memory=300,  # a budget: auto sets the threshold
    )
    m = train(cfg, progress=False)
    assert m["allocator"]["mmap_threshold"] == allocator.MMAP_THRESHOLD
    assert any(n.startswith("allocator: glibc M_MMAP_THRESHOLD 1 MiB") for n in m["notes"])


@needs_glibc
def test_auto_sets_it_only_under_a_memory_budget() -> None:
    """Without --max-memory (no budget) auto leaves glibc's faster default; on forces it."""
    script = RETAINED.replace("tune_allocator()", "tune_allocator(budget=False)")
    run = lambda env: subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
    ).stdout.split()
    threshold, kept = run({})
    assert threshold == "None" and int(kept) >= 12
    threshold, kept = run({allocator.ENV: "on"})
    assert threshold == str(allocator.MMAP_THRESHOLD) and int(kept) < 4


# one 16 MiB buffer touched and freed in a process a Dask nanny started (its
# MALLOC_TRIM_THRESHOLD_): printed, whether the thresholds were changed and the MiB the
# freed buffer left in RSS (kept in the heap for the next step, or unmapped)
NANNY = """
import sys
import numpy as np
from losa_cache.train.allocator import heap_for_large_buffers
changed = heap_for_large_buffers() if sys.argv[1] == "fix" else False
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
base = rss()
a = np.ones(16 << 20, np.uint8)
del a
print(changed, (rss() - base) >> 20)
"""


@needs_glibc
@pytest.mark.parametrize("fix", ["fix", "no"])
def test_a_dask_workers_large_buffers_come_from_the_heap_again(fix: str) -> None:
    """The nanny's trim threshold makes every large buffer a fresh mapping (nothing kept,
    each step's buffers zeroed anew); :func:`heap_for_large_buffers` serves them from the
    heap again, as glibc would without the variable."""
    env = {"PATH": "/usr/bin:/bin", allocator.DASK_TRIM: "65536"}
    out = subprocess.run(
        [sys.executable, "-c", NANNY, fix], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    changed, kept = out[0] == "True", int(out[1])
    assert (changed, kept >= 12) == ((True, True) if fix == "fix" else (False, False)), out
    plain = subprocess.run(
        [sys.executable, "-c", NANNY, "fix"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    assert plain.split()[0] == "False"  # no nanny, nothing to undo
