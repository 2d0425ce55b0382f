"""Whole runs SIGKILLed (client, scheduler and workers at once) at random points, then
resumed by the same command: the store ends identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

from _dist_helpers import assert_same_store, cli_args, done_count, kill_when, start_run
from typer.testing import CliRunner

from losa_cache.cli.main import app
from losa_cache.store import open_store


def test_whole_run_killed_at_random_points_then_resumed(
    reference_store: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("LOSA_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    path = str(tmp_path / "crashy.zarr")
    log = tmp_path / "runs.log"
    # one kill at a random moment of start-up (imports, cluster, store creation), then two
    # after a random number of finished shards (of 19; at most 13, so that between two
    # polls of a loaded machine the run cannot finish all 19 before the kill lands)
    delay = rng.uniform(1.0, 8.0)
    targets = sorted(rng.sample(range(2, 14), 2))
    # (capped at the first finished shard: a warm start-up can otherwise finish the whole
    # run before a late random delay, and the kill would miss)
    points: list[Callable[[float], bool]] = [
        lambda t0: time.time() - t0 >= delay or done_count(path) >= 1
    ]
    points += [lambda _t0, k=k: done_count(path) >= k for k in targets]
    for ready in points:
        t0 = time.time()
        proc = start_run(path, "local:2", 0.2, log)
        assert kill_when(proc, lambda r=ready, t=t0: r(t)), f"run ended before its kill ({seed=})"
    before = done_count(path)
    assert before < 19, f"seed {seed}: the last kill must land mid-run"
    result = CliRunner().invoke(app, [*cli_args(path), "--cluster=local:2", "--json"])
    assert result.exit_code == 0, f"seed {seed}: {result.output}"
    out = json.loads(result.stdout)
    assert out["resumed"] and out["shards_written"] == 19 - before, f"seed {seed}"
    assert open_store(path).complete
    assert_same_store(path, reference_store)
