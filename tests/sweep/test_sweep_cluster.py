"""Sweeps on Dask (``--cluster`` / ``--scheduler``): every member equals the in-process
sweep's bit for bit, through a worker killed mid-group, a client killed then ``--resume``,
and a group failing on its own.

One cluster is started the way a multi-machine one is: ``dask scheduler`` and ``dask
worker`` as separate processes on 127.0.0.1; one test starts ``--cluster local:2``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed import Client, WorkerPlugin

from losa_cache.sweep import SweepConfig, run_sweep
from losa_cache.sweep.cluster import GroupsFailed
from tests.sweep.conftest import SMALL, adapter_weights, checkpoint_weights, same
from tests.sweep.test_sweep_exact import curves

ROOT = Path(__file__).resolve().parents[2]
#: 12 runs (2 tasks x 2 lrs x losa at 2 layer specs and linear) that checkpoint often
GRID: dict[str, Any] = {
    **SMALL,
    "task": ["full", "half"],
    "lr": [0.01, 0.05],
    "batching": "loop",
    "checkpoint_every": 2,
    "costs": False,
}
LONG = {"steps": 40}  # the fault tests: groups long enough to be killed mid-way
#: what differs between two processes training the same run: wall time and speed
TIMING = {"train_seconds", "train_img_s", "img_s", "seconds", "group", "bytes_read"}


# -- helpers ------------------------------------------------------------------------------
def members(res: dict) -> dict[str, dict]:
    return {f"{r['task']}/{r['run']}": r for r in res["results"]}


def assert_same_members(res: dict, ref: dict) -> None:
    """Every member: checkpoint, adapter, learning curves and results row (bar timing)."""
    got, want = members(res), members(ref)
    assert got.keys() == want.keys()
    for key, row in want.items():
        mine = got[key]
        assert same(checkpoint_weights(mine["adapter"]), checkpoint_weights(row["adapter"])), key
        assert same(adapter_weights(mine["adapter"]), adapter_weights(row["adapter"])), key
        assert curves(mine["adapter"]) == curves(row["adapter"]), key
        strip = lambda r: {k: v for k, v in r.items() if k not in TIMING and k != "adapter"}
        assert strip(mine) == strip(row), key
    assert {t: b["run"] for t, b in res["summary"]["best"].items()} == {
        t: b["run"] for t, b in ref["summary"]["best"].items()
    }


def group_runs(out: Path) -> dict[int, list[Path]]:
    """Each group's run folders, from sweep.json."""
    doc = json.loads((out / "sweep.json").read_text())
    where = {f"{r['task']}/{r['id']}": Path(r["train"]["out"]) for r in doc["runs"]}
    return {g: [where[k] for k in grp["runs"]] for g, grp in enumerate(doc["groups"])}


def finished_files(out: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime, bytes) of everything finished groups wrote: must never change."""
    files = {}
    for g, runs in group_runs(out).items():
        done = out / "groups" / f"{g}.json"
        if done.is_file():
            for f in [done, *(p for r in runs for p in r.iterdir() if p.is_file())]:
                files[str(f)] = (f.stat().st_mtime_ns, f.read_bytes())
    return files


def wait_for(check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError("timed out")


class SlowTicks(WorkerPlugin):
    """Every training tick on the workers sleeps: time to kill things mid-group."""

    name = "test-slow-ticks"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self, worker: Any) -> None:
        from losa_cache.train.engine import Engine

        self.real = real = Engine._feed
        pause = self.seconds

        def feed(engine: Any, *args: Any, **kwargs: Any) -> Any:
            time.sleep(pause)
            return real(engine, *args, **kwargs)

        Engine._feed = feed

    def teardown(self, worker: Any) -> None:
        from losa_cache.train.engine import Engine

        Engine._feed = self.real


class FailGroup(WorkerPlugin):
    """Group ``gid`` raises on the workers, as a bad config of its own would."""

    name = "test-fail-group"

    def __init__(self, gid: int) -> None:
        self.gid = gid

    def setup(self, worker: Any) -> None:
        import losa_cache.sweep.runner as R

        self.real = real = R._train_group
        bad = self.gid

        def train(
            cfg: Any, source: Any, inputs: Any, device: Any, gid: int, *a: Any, **kw: Any
        ) -> bool:
            if gid == bad:
                raise ValueError(f"group {gid} has a bad config (test)")
            return real(cfg, source, inputs, device, gid, *a, **kw)

        R._train_group = train

    def teardown(self, worker: Any) -> None:
        import losa_cache.sweep.runner as R

        R._train_group = self.real


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` and ``dask worker --nworkers 2`` as separate processes on
    loopback (as on several machines); yields the scheduler's address."""
    tmp = tmp_path_factory.mktemp("dask")
    file = tmp / "scheduler.json"
    # this module (its worker plugins) importable on the workers, as pytest imported it
    path = os.pathsep.join([str(ROOT), str(Path(__file__).parent)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    log = (tmp / "dask.log").open("ab")
    sched = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
        env=env, stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    procs = [sched]
    try:
        wait_for(file.is_file, 60)
        address = json.loads(file.read_text())["address"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2",
             "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
            env=env, stdout=log, stderr=log, start_new_session=True))  # fmt: skip
        with Client(address) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):  # the sessions this fixture started
            with _gone():
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with _gone():
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


class _gone:
    """Ignore a process that already ended."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is ProcessLookupError


@pytest.fixture(scope="module")
def client(scheduler: str) -> Iterator[Client]:
    """A client of the loopback cluster, with every tick slowed down."""
    with Client(scheduler) as c:
        c.register_plugin(SlowTicks(0.01))
        yield c


@pytest.fixture(scope="module")
def reference(sweep_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The in-process sweep of ``GRID`` (one group), and its largest memory estimate."""
    out = tmp_path_factory.mktemp("ref") / "sweep"
    res = run_sweep(SweepConfig(store=sweep_store, out=str(out), **GRID), progress=False)
    return {"res": res, "budget": 3 * max(r["train_memory_est"] for r in res["results"])}


@pytest.fixture(scope="module")
def long_reference(
    sweep_store: str, tmp_path_factory: pytest.TempPathFactory, reference: dict
) -> dict:
    out = tmp_path_factory.mktemp("ref-long") / "sweep"
    return run_sweep(
        SweepConfig(store=sweep_store, out=str(out), **{**GRID, **LONG}), progress=False
    )


# -- tests --------------------------------------------------------------------------------
def test_local_two_workers_equal_the_in_process_sweep(make_sweep, reference) -> None:
    cfg = make_sweep("local2", **GRID, memory_budget=reference["budget"], cluster="local:2")
    res = run_sweep(cfg, progress=False)
    assert len(res["summary"]["groups"]) >= 3  # several tasks for two workers
    assert_same_members(res, reference["res"])
    busy = res["summary"]["cluster"]
    assert busy["where"] == "local:2"
    ran = sorted(g for w in busy["workers"].values() for g in w["groups"])
    assert ran == list(range(len(res["summary"]["groups"])))  # each group once
    assert all(w["busy_seconds"] > 0 for w in busy["workers"].values())
    saved = json.loads((Path(cfg.out) / "results.json").read_text())
    assert saved["summary"]["cluster"]["workers"].keys() == busy["workers"].keys()


def test_a_worker_killed_mid_group_resumes_it_from_checkpoints(
    make_sweep, client, scheduler, reference, long_reference
) -> None:
    cfg = make_sweep(
        "killed", **{**GRID, **LONG}, memory_budget=reference["budget"], scheduler=scheduler
    )
    out, box = Path(cfg.out), {}
    thread = threading.Thread(target=lambda: box.update(res=run_sweep(cfg, progress=False)))
    thread.start()

    def busy_group_with_a_checkpoint() -> tuple[str, int] | None:
        if not (out / "sweep.json").is_file():
            return None
        runs = group_runs(out)
        for worker, keys in client.processing().items():
            for key in keys:
                gid = int(key.rsplit("-", 1)[1])
                if any((r / "checkpoint.pt").is_file() for r in runs[gid]):
                    return worker, gid
        return None

    worker, gid = wait_for(busy_group_with_a_checkpoint)
    pid = client.run(os.getpid, workers=[worker])[worker]
    os.kill(pid, signal.SIGKILL)  # a worker of the cluster this module started
    thread.join(300)
    res = box["res"]
    assert res["summary"]["complete"]
    assert_same_members(res, long_reference)
    resumed = res["summary"]["cluster"]["resumed_steps"]
    assert resumed[str(gid)] > 0, "the killed group restarted from scratch"


SCRIPT = "import sys; from losa_cache.cli.main import main; sys.argv[0] = 'losa-cache'; main()"


def cli_args(cfg: SweepConfig, scheduler: str) -> list[str]:
    g = GRID
    return [
        sys.executable, "-c", SCRIPT, "sweep", "--store", cfg.store, "--out", cfg.out,
        "--task", ",".join(g["task"]), "--method", ",".join(g["method"]),
        "--rank", "4", "--layers", ",".join(g["layers"]),
        "--lr", ",".join(map(str, g["lr"])), "--steps", str(LONG["steps"]),
        "--batch-size", "8", "--device", "cpu", "--workers", "1", "--speed-batches", "0",
        "--amp", "fp32", "--batching", "loop", "--checkpoint-every", "2", "--no-costs",
        "--memory-budget", str(cfg.memory_budget), "--scheduler", scheduler, "--quiet",
    ]  # fmt: skip


def test_client_killed_then_resume_keeps_finished_groups(
    make_sweep, client, scheduler, reference, long_reference
) -> None:
    cfg = make_sweep(
        "client", **{**GRID, **LONG}, memory_budget=reference["budget"], scheduler=scheduler
    )
    out = Path(cfg.out)
    proc = subprocess.Popen(
        cli_args(cfg, scheduler),
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: list((out / "groups").glob("*.json")) or proc.poll() is not None)
    finally:
        with _gone():
            os.killpg(proc.pid, signal.SIGKILL)  # the client alone: the workers go on
        proc.wait()
    n = len(group_runs(out))
    finished = finished_files(out)
    assert finished and len(list((out / "groups").glob("*.json"))) < n, "killed too late"
    res = run_sweep(dataclasses.replace(cfg, resume=True), progress=False)
    assert res["summary"]["complete"]
    assert_same_members(res, long_reference)
    after = {f: v for f, v in finished_files(out).items() if f in finished}
    assert after == finished, "a finished group's files were rewritten"


def test_a_failing_group_is_named_and_the_others_finish(
    make_sweep, client, scheduler, reference
) -> None:
    cfg = make_sweep("fail", **GRID, memory_budget=reference["budget"], scheduler=scheduler)
    out = Path(cfg.out)
    client.register_plugin(FailGroup(1))
    try:
        with pytest.raises(GroupsFailed, match=r"1 group\(s\) failed.*group 2 .*bad config"):
            run_sweep(cfg, progress=False)
    finally:
        client.unregister_worker_plugin(FailGroup.name)
    n = len(group_runs(out))
    done = sorted(int(p.stem) for p in (out / "groups").glob("*.json"))
    assert done == [g for g in range(n) if g != 1] and not (out / "results.json").exists()
    finished = finished_files(out)
    res = run_sweep(dataclasses.replace(cfg, resume=True), progress=False)
    assert_same_members(res, reference["res"])
    assert res["summary"]["cluster"]["workers"]  # only group 2 ran again
    assert [g for w in res["summary"]["cluster"]["workers"].values() for g in w["groups"]] == [1]
    assert {f: v for f, v in finished_files(out).items() if f in finished} == finished


def test_refusals_before_anything_starts(make_sweep, tmp_path) -> None:
    with pytest.raises(ValueError, match="memory:// stores live inside one process"):
        run_sweep(make_sweep("mem", store="memory://s.zarr", cluster="local:2"), progress=False)
    with pytest.raises(ValueError, match="--cluster 'gpu:2'"):
        run_sweep(make_sweep("bad", cluster="gpu:2"), progress=False)
    with pytest.raises(ValueError, match="not both"):
        run_sweep(
            make_sweep("both", cluster="local:2", scheduler="tcp://127.0.0.1:1"), progress=False
        )
    assert not list(tmp_path.iterdir()), "a refused sweep wrote nothing"
    # the flags exist on the CLI, generated from SweepConfig's fields
    from typer.testing import CliRunner

    from losa_cache.cli.main import app

    text = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"}).output
    assert "--cluster" in text and "--scheduler" in text


def test_a_live_sweep_with_a_baseline_on_the_cluster(client, scheduler, tmp_path) -> None:
    """--live: each group's worker runs the backbone; the baseline is a group of its own."""
    live = dict(live=True, model="vit_micro", random_init=True, dataset="demo", limit=32,
                method=["losa", "bitfit"], rank=[4], layers=["evenly:2", "all"],
                lr=[0.05], steps=5, batch_size=8, device="cpu", workers=0, speed_batches=0,
                costs=False, amp="fp32", batching="loop")  # fmt: skip
    ref = run_sweep(SweepConfig(out=str(tmp_path / "here"), **live), progress=False)
    res = run_sweep(
        SweepConfig(out=str(tmp_path / "there"), scheduler=scheduler, **live), progress=False
    )
    assert res["summary"]["mode"] == "live" and len(res["summary"]["groups"]) == 2
    assert_same_members(res, ref)


def test_a_worker_loads_the_live_backbone_once(monkeypatch, tmp_path) -> None:
    """Every live group a worker trains gets a source on its own copy of the backbone the
    worker loaded on its first group (a side group prunes its copy, not the next one's)."""
    import losa_cache.train.live as live_mod
    from losa_cache.sweep.cluster import SweepPlugin

    loads = []
    real = live_mod.live_backbone
    monkeypatch.setattr(live_mod, "live_backbone", lambda *a: loads.append(1) or real(*a))
    cfg = SweepConfig(out=str(tmp_path), live=True, model="vit_micro", random_init=True,
                      dataset="demo", limit=8, device="cpu", workers=0)  # fmt: skip
    plugin = SweepPlugin(cfg, None)
    plugin.setup(None)
    with plugin.source() as first:
        first.prune([0])  # a side group reading block 0: its copy keeps one block
        pruned = len(first.backbone.model.blocks)
    with plugin.source() as second:
        whole = len(second.backbone.model.blocks)
        one, two = (s.backbone.model.blocks[0].state_dict() for s in (first, second))
        same = one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert len(loads) == 1 and pruned == 1 and whole == 4 and same
    assert first.backbone is not second.backbone


# -- planned for the workers, not the client ----------------------------------------------
def test_groups_are_sized_for_the_workers_sharing_a_host(scheduler, make_sweep) -> None:
    """The group budget comes from the workers: the loopback cluster's two workers share
    this host's RAM, so each may use about half of what one process here would."""
    from losa_cache.sweep.cluster import sweep_cluster
    from losa_cache.sweep.grouping import default_budget

    cfg = make_sweep("memory", scheduler=scheduler, cache="ram")
    with sweep_cluster(cfg, None, False) as cluster:
        memory = cluster.memory(10 << 20)
    alone = default_budget(torch.device("cpu"), 10 << 20)
    assert memory.cache.mode == "ram" and memory.cache.bytes == 10 << 20
    assert 0.3 * alone < memory.budget < 0.6 * alone  # free RAM moves a little meanwhile
    with (
        sweep_cluster(make_sweep("gpu", scheduler=scheduler, cache="gpu"), None, False) as c,
        pytest.raises(ValueError, match="--cache gpu needs a CUDA device"),
    ):
        c.memory(10 << 20)  # refused by the workers (a GPU client would have said yes)


def test_the_tightest_worker_sets_the_budget() -> None:
    from losa_cache.sweep.cluster import tightest
    from losa_cache.sweep.grouping import MODEL_FRACTION, MODEL_RESERVE

    gib = 1 << 30
    ram = lambda host, free: {
        "pool": f"{host}/ram", "device": "cpu", "free": {"ram": free},
        "cache": {"mode": "ram", "bytes": gib, "reason": "r"},
    }  # fmt: skip
    gpu = {"pool": "a/gpu/0", "device": "cuda", "free": {"ram": 64 * gib, "gpu": 40 * gib},
           "cache": {"mode": "gpu", "bytes": 2 * gib, "reason": "g"}}  # fmt: skip
    share = lambda free, n, cache: (int(free * MODEL_FRACTION) - MODEL_RESERVE) // n - cache
    # two workers on host a's 64 GiB share it; host b's one worker has 48 GiB to itself
    got = tightest({"w1": ram("a", 64 * gib), "w2": ram("a", 64 * gib),
                    "w3": ram("b", 48 * gib)})  # fmt: skip
    assert got.budget == share(64 * gib, 2, gib) and got.cache.mode == "ram"
    got = tightest({"w1": gpu, "w2": ram("b", 48 * gib)})
    assert got.budget == share(40 * gib, 1, 2 * gib) and got.cache.mode == "gpu"


def test_a_worker_finds_each_run_profile_where_it_was_planned(make_sweep, monkeypatch) -> None:
    """A worker whose amp rule differs from the planner's (a GPU worker, a CPU without
    bf16) still finds every run's profile: sweep.json keeps the key it was planned under."""
    import losa_cache.train.run as run_mod
    from losa_cache.sweep.runner import SWEEP_JSON, _key, _planned
    from losa_cache.train.sources import pick_device

    monkeypatch.setattr(run_mod, "cpu_has_bf16", lambda: True)
    cfg = make_sweep("planned", amp="auto", steps=1, costs=False)
    run_sweep(cfg, progress=False)
    doc = json.loads((Path(cfg.out) / SWEEP_JSON).read_text())
    keys = [f"{r['task']}/{r['id']}" for r in doc["runs"]]
    monkeypatch.setattr(run_mod, "cpu_has_bf16", lambda: False)  # the worker's CPU
    cpu = pick_device("cpu")
    with _planned(cfg, doc, keys, cpu, None, None) as (_, specs, _, sides, profs):
        assert profs.keys() == set(keys)
        for r in specs:
            planned = doc["profile_keys"][r.key]
            assert json.loads(planned)["amp"] is True
            assert _key(r, sides, cpu) not in doc["profiles"]  # the worker's own key
            assert profs[r.key].to_dict() == doc["profiles"][planned]


def test_costs_are_timed_on_a_worker(scheduler, make_sweep) -> None:
    """--costs on a cluster: one task on a worker times every config; the rows carry the
    same columns as an in-process sweep's, memory close to its."""
    costs = dict(speed_batches=2, costs=True, live_metrics=True)
    ref = run_sweep(make_sweep("costs-here", **costs), progress=False)
    res = run_sweep(make_sweep("costs-there", **costs, scheduler=scheduler), progress=False)
    with Client(scheduler) as c:
        workers = set(c.scheduler_info(n_workers=-1)["workers"])
    assert res["summary"]["cluster"]["costs"] in workers
    mine, want = members(res), members(ref)
    measured = ("train_img_s", "train_memory_b1_live", "infer_memory_b1", "infer_img_s_b1")
    for key, row in want.items():
        for col in measured:
            assert (mine[key].get(col) is None) == (row.get(col) is None), (key, col)
        assert mine[key].get("costs_measured") == row.get("costs_measured"), key
        for col in ("train_memory_b1_live", "infer_memory_b1"):  # CPU peaks move a little
            a, b = mine[key].get(col), row.get(col)
            assert (a is None and b is None) or 0.75 < a / b < 1.33, (key, col, a, b)
