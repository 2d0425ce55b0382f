"""Sweeps on a Dask cluster: one group of configs per task, the largest first.

    losa-cache sweep ... --cluster local:2            # LocalCluster, 2 processes
    losa-cache sweep ... --cluster cuda               # dask-cuda, one worker per GPU
    losa-cache sweep ... --scheduler tcp://h:8786     # an existing cluster

The client plans the sweep exactly as one process does (runs, profiles, groups,
``sweep.json``) and holds the sweep folder's lock throughout, but sizes the groups for
the workers' memory (each asked what it has; workers on one host's RAM or one GPU share
it), not its own; then every unfinished group is one Dask task, trained on its worker by
the same code as a local sweep (:func:`losa_cache.sweep.runner.train_group_alone`), so
every run writes its own folder and equals the same config trained alone. The cluster
machinery is extraction's (:mod:`losa_cache.distributed`: ``parse_cluster``,
``connect``, a worker plugin holding the open store, retries, events feeding one
progress bar).

Placement: at most one task per worker thread is in flight, and whenever one frees up
the client submits the costliest group left (estimated training FLOPs), so the slowest
worker ends close to the others; the summary says how long each worker was busy.

Faults: each group task holds ``groups/.<g>.lock`` (flock: the kernel drops it with a
killed worker). A worker killed mid-group: Dask runs the task again elsewhere and the
group's runs continue from their last checkpoints (exact, as ``--resume``). The client
killed: the same command with ``--resume`` skips finished groups. A group failing on its
own is retried, then named while the other groups go on; the sweep then stops before
its results, and ``--resume`` after the fix trains only what is left. A finished group
(``groups/<g>.json``) is never trained again. The costs (``--costs``) are timed after
training by one task on one worker, the device the runs trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, WorkerPlugin, get_worker, wait

from losa_cache.distributed import connect, parse_cluster, plugin_run, require_shared_store
from losa_cache.files import release_flock, try_flock
from losa_cache.outdir import safe_subdir
from losa_cache.progress import note, progress_bar
from losa_cache.sweep.config import SweepConfig

__all__ = [
    "GroupWork",
    "GroupsFailed",
    "SweepCluster",
    "for_cluster",
    "largest_first",
    "sweep_cluster",
    "tightest",
]

#: Dask re-runs a group task whose code raised this many times (a killed worker's task
#: is rescheduled by Dask itself, up to ``distributed.scheduler.allowed-failures``).
RETRIES = 1
#: Seconds between a worker's progress events of one group.
EVENT_EVERY = 0.5
#: Seconds between the client's looks at the cluster (the bar, workers come and go).
REFRESH = 0.5

#: ``train(cfg, gid, storage_options, on_tick, source) -> all runs ended``
TrainGroup = Callable[..., bool]


class GroupsFailed(ValueError):
    """Some groups failed on their own (after retries); the others finished."""


@dataclass(frozen=True)
class GroupWork:
    """One group to train: its runs, optimizer steps and estimated FLOPs (its cost)."""

    gid: int
    runs: list[str]
    steps: int
    flops: float


def for_cluster(cfg: SweepConfig) -> SweepConfig:
    """``cfg`` checked for a cluster (flags, a store every worker can reach), its ``--out``
    absolute: a worker started elsewhere has another working directory."""
    parse_cluster(cfg.cluster, cfg.scheduler)  # ValueError naming the flag
    if not cfg.live:
        require_shared_store(cfg.store, "sweep")
    return dataclasses.replace(cfg, out=str(Path(cfg.out).absolute()))


def largest_first(work: list[GroupWork]) -> list[GroupWork]:
    """The submission order: costliest first (LPT), ties by group number."""
    return sorted(work, key=lambda w: (-w.flops, w.gid))


# -- on the workers ---------------------------------------------------------------------
class SweepPlugin(WorkerPlugin):
    """The sweep's config and, opened once per worker on its first task (a failure to open
    is that task's error, not a hung registration), the store of a store sweep or the
    backbone of a live sweep: each live group gets a source on its own copy of that
    backbone (a side group prunes what it runs)."""

    def __init__(self, cfg: SweepConfig, storage_options: dict | None) -> None:
        self.cfg = cfg
        self.storage_options = storage_options
        self._source: Any = None
        self._backbone: Any = None
        self._lock: threading.Lock | None = None

    def setup(self, worker: Any) -> None:
        from losa_cache.train.allocator import heap_for_large_buffers

        heap_for_large_buffers()  # the nanny's malloc setting halves training speed
        self._lock = threading.Lock()

    def teardown(self, worker: Any) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    @contextlib.contextmanager
    def source(self) -> Iterator[Any]:
        """The group's data source: the worker's store, or a live source on a copy of the
        worker's backbone (closed after the group)."""
        from losa_cache.train.sources import pick_device

        assert self._lock is not None, "plugin used before setup"
        device = pick_device(self.cfg.device)
        if not self.cfg.live:
            with self._lock:
                if self._source is None:
                    from losa_cache.train.trainer import open_source

                    self._source = open_source(self.cfg, device, self.storage_options)
            yield self._source
            return
        from losa_cache.train.live import LiveSource, live_backbone

        with self._lock:
            if self._backbone is None:
                self._backbone = live_backbone(self.cfg, device)
        live = LiveSource(self.cfg, device, self._backbone)
        try:
            yield live
        finally:
            live.close()


@contextlib.contextmanager
def group_lock(out: str, gid: int) -> Iterator[None]:
    """``groups/.<gid>.lock`` for the life of one attempt: a second attempt of the same group
    (its first's client gone, its worker still training) waits for the first to end."""
    file = safe_subdir(out, "groups") / f".{gid}.lock"
    record = {"pid": os.getpid(), "group": gid, "since": time.time()}
    while True:
        fd, _ = try_flock(file, record)
        if fd is not None:
            break
        time.sleep(1.0)
    try:
        yield
    finally:
        release_flock(fd, file)


def group_task(train: TrainGroup, gid: int, plugin: str) -> dict[str, Any]:
    """Train group ``gid`` on this worker; returns when and where, for the summary."""
    worker = get_worker()
    ext: SweepPlugin = worker.plugins[plugin]
    attempt, last, first = uuid.uuid4().hex[:8], [0.0, 0, 0], [None]

    def on_tick(runs: list[Any]) -> None:
        now, steps = time.monotonic(), sum(r.step for r in runs)
        images = sum(r.step * r.batch for r in runs)  # configs' images trained so far
        if first[0] is None:
            first[0] = steps  # before the first step: what the checkpoints held
        if now - last[0] >= EVENT_EVERY:
            rate = (images - last[2]) / (now - last[0]) if last[0] else 0.0
            worker.log_event(
                plugin, {"group": gid, "attempt": attempt, "steps": steps, "img_s": rate}
            )
            last[:] = [now, steps, images]

    t0, wall = time.perf_counter(), time.time()
    with group_lock(ext.cfg.out, gid), ext.source() as source:
        done = train(ext.cfg, gid, ext.storage_options, on_tick, source)
    return {
        "group": gid,
        "done": done,
        "worker": worker.address,
        "started": wall,
        "seconds": time.perf_counter() - t0,
        "resumed_steps": first[0] or 0,
    }


def worker_memory(device_name: str, cache: str, need: int | None) -> dict[str, Any]:
    """On a worker: the memory its groups train in (``pool``: its host's RAM, or its GPU),
    what is free there, and the ``--cache`` a group there would hold for ``need`` bytes
    (an explicit mode that cannot work there raises, naming it)."""
    import torch

    from losa_cache.train.cache import choose_cache, free_memory
    from losa_cache.train.sources import pick_device

    device = pick_device(device_name)
    free = free_memory(device)
    pool = f"{socket.gethostname()}/ram"
    if device.type == "cuda":
        pool = f"{socket.gethostname()}/gpu/{torch.cuda.get_device_properties(device).uuid}"
    choice = choose_cache(cache, need, device, free)
    return {"pool": pool, "device": device.type, "free": free, "cache": choice.to_dict()}


def task_alone(fn: Callable[..., Any], cfg: SweepConfig, storage_options: dict | None) -> str:
    """``fn(cfg, storage_options)`` on this worker (its own source): returns where."""
    from losa_cache.train.allocator import heap_for_large_buffers

    heap_for_large_buffers()  # a worker that joined after training has not set it yet
    fn(cfg, storage_options)
    return get_worker().address


# -- on the client ----------------------------------------------------------------------
@dataclass(frozen=True)
class WorkersMemory:
    """What the sweep plans with on a cluster: a group's memory, the workers' cache."""

    budget: int
    cache: Any  # CacheChoice


def tightest(facts: dict[str, dict[str, Any]]) -> WorkersMemory:
    """The memory one group may use on the tightest worker, and that worker's cache
    choice: workers drawing on one pool share it equally, each holding its own cache."""
    import torch

    from losa_cache.sweep.grouping import default_budget
    from losa_cache.train.cache import CacheChoice

    sharing = Counter(f["pool"] for f in facts.values())
    each = []
    for _, f in sorted(facts.items()):
        device, choice = torch.device(f["device"]), CacheChoice(**f["cache"])
        here = choice.bytes if choice.on(device) else 0
        each.append(
            WorkersMemory(default_budget(device, here, sharing[f["pool"]], f["free"]), choice)
        )
    return min(each, key=lambda m: m.budget)


class SweepCluster:
    """The sweep's Dask client: asked for the workers' memory, trains the groups, runs
    one task on a worker (the costs), and says how each worker was used."""

    def __init__(
        self, client: Client, spec: Any, cfg: SweepConfig, storage_options: dict | None,
        progress: bool,
    ) -> None:  # fmt: skip
        self.client, self.spec, self.cfg = client, spec, cfg
        self.storage_options, self.progress = storage_options, progress
        self.results: list[dict[str, Any]] = []
        self.tasks: dict[str, str] = {}

    def memory(self, need: int | None) -> WorkersMemory:
        """Each worker's memory and cache for ``need`` bytes of features, the tightest
        kept (waits for a first worker to join an existing scheduler)."""
        if not self.client.scheduler_info(n_workers=-1)["workers"]:
            note("waiting for a Dask worker to join the scheduler", self.progress)
            self.client.wait_for_workers(1)
        facts = self.client.run(worker_memory, self.cfg.device, self.cfg.cache, need)
        return tightest(facts)

    def train(self, work: list[GroupWork], train: TrainGroup) -> int | None:
        """Train ``work``'s groups, costliest first; returns the first group --stop-at
        left unfinished (None: all finished). Raises :class:`GroupsFailed`, naming them,
        when groups failed on their own after the others finished."""
        results, failed = _run(self.client, self.cfg, work, train, self.storage_options,
                               self.progress)  # fmt: skip
        self.results += results
        if failed:
            names = "; ".join(
                f"group {g + 1} ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}): {why}"
                for g, runs, why in failed
            )
            raise GroupsFailed(
                f"{len(failed)} group(s) failed, the other {len(results)} finished: "
                f"{names}; fix the cause, then rerun with --resume (finished "
                "groups are kept)"
            )
        stopped = sorted(r["group"] for r in results if not r["done"])
        return stopped[0] if stopped else None

    def call(self, fn: Callable[..., Any], label: str) -> None:
        """``fn(cfg, storage_options)`` as one task on one worker (the others idle, so
        timings are its own); ``label`` names it in the summary and a failure."""
        note(f"{label}: on one worker of the cluster", self.progress)
        fut = self.client.submit(task_alone, fn, self.cfg, self.storage_options,
                                 key=f"losa-sweep-{label}-{uuid.uuid4().hex[:12]}",
                                 pure=False)  # fmt: skip
        try:
            self.tasks[label] = fut.result()
        except Exception:
            why = _outcome(fut)
            raise RuntimeError(
                f"{label} failed on the cluster: {why}; --resume redoes it"
            ) from None

    def summary(self) -> dict[str, Any]:
        """The summary's ``cluster`` entry: each worker's busy seconds and groups."""
        return {"cluster": {**_busy(self.spec, self.results), **self.tasks}}


@contextlib.contextmanager
def sweep_cluster(
    cfg: SweepConfig, storage_options: dict | None, progress: bool
) -> Iterator[SweepCluster]:
    """A :class:`SweepCluster` on the cluster ``cfg`` names (one started here is shut down
    on exit); a scheduler it cannot reach, or dask-cuda missing, is one line."""
    spec = parse_cluster(cfg.cluster, cfg.scheduler)
    assert spec is not None
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(connect(spec))
        except RuntimeError as e:
            if "Dask scheduler" in str(e) or "dask-cuda" in str(e):
                raise ValueError(str(e)) from None
            raise
        yield SweepCluster(client, spec, cfg, storage_options, progress)


@dataclass
class _Progress:
    """One bar over every run's steps: finished groups count whole, running ones as their
    latest event says (a retried group restarts from its checkpoints, never counted twice)."""

    work: dict[int, GroupWork]
    enabled: bool
    partial: dict[int, tuple[str, int, float]] = field(default_factory=dict)
    finished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        total = sum(w.steps for w in self.work.values())
        self.bar = progress_bar(total, "sweep", "step", self.enabled)
        self.bar.set_postfix_str("starting workers")

    def on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        with self.lock:
            if msg["group"] in self.work:
                self.partial[msg["group"]] = (msg["attempt"], msg["steps"], msg["img_s"])

    def group_done(self, gid: int) -> None:
        with self.lock:
            self.work.pop(gid, None)
            self.partial.pop(gid, None)

    def refresh(self, done: int, running: int, waiting: int, failed: int) -> None:
        with self.lock:
            left = sum(w.steps for w in self.work.values())
            n = self.bar.total - left + sum(s for _, s, _ in self.partial.values())
            rate = sum(r for _, _, r in self.partial.values())
        self.bar.update(max(0, min(n, self.bar.total) - self.bar.n))
        post = {"groups": f"{done} done, {running} running, {waiting} waiting"}
        if failed:
            post["failed"] = failed
        self.bar.set_postfix(**post, img_s=f"{rate:,.0f}")

    def close(self) -> None:
        self.bar.close()


def _busy(spec: Any, results: list[dict[str, Any]]) -> dict[str, Any]:
    """How long each worker trained, and which groups (in the order it ran them)."""
    workers: dict[str, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r["started"]):
        w = workers.setdefault(r["worker"], {"busy_seconds": 0.0, "groups": []})
        w["busy_seconds"] += r["seconds"]
        w["groups"].append(r["group"])
    where = (
        spec.address
        if spec.kind == "scheduler"
        else (f"local:{spec.workers}" if spec.workers else spec.kind)
    )
    return {
        "where": where,
        "workers": workers,
        "resumed_steps": {str(r["group"]): r["resumed_steps"] for r in results},
    }


def _run(
    client: Client,
    cfg: SweepConfig,
    work: list[GroupWork],
    train: TrainGroup,
    storage_options: dict | None,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[tuple[int, list[str], str]]]:
    name = f"losa-sweep-{uuid.uuid4().hex[:12]}"  # per run: concurrent sweeps never share
    bar = _Progress({w.gid: w for w in work}, progress)
    running: dict[Future, GroupWork] = {}
    with plugin_run(client, name, SweepPlugin(cfg, storage_options), bar):
        try:
            return _loop(client, name, train, largest_first(work), running, bar)
        except BaseException:
            client.cancel(list(running))
            raise


def _loop(
    client: Client,
    name: str,
    train: TrainGroup,
    queue: list[GroupWork],
    running: dict[Future, GroupWork],
    bar: _Progress,
) -> tuple[list[dict[str, Any]], list[tuple[int, list[str], str]]]:
    """Keep one task per worker thread in flight, costliest first; collect as they end."""
    results: list[dict[str, Any]] = []
    failed: list[tuple[int, list[str], str]] = []
    slots, asked = 0, 0.0
    while queue or running:
        for fut in [f for f in running if f.done()]:  # first: their slots free up
            w = running.pop(fut)
            outcome = _outcome(fut)
            if isinstance(outcome, str):
                failed.append((w.gid, w.runs, outcome))
                note(f"group {w.gid + 1} failed: {outcome}", bar.enabled)
            else:
                results.append(outcome)
            bar.group_done(w.gid)
        if time.monotonic() - asked > 2 * REFRESH:  # workers come and go
            slots, asked = sum(client.nthreads().values()), time.monotonic()
        while queue and len(running) < max(1, slots):  # one in flight before any worker
            w = queue.pop(0)
            fut = client.submit(
                group_task,
                train,
                w.gid,
                name,
                retries=RETRIES,
                key=f"{name}-group-{w.gid}",
                pure=False,
            )
            running[fut] = w
        bar.refresh(len(results), len(running), len(queue), len(failed))
        if running:  # asleep until a group ends: polling would take CPU from the workers
            with contextlib.suppress(TimeoutError):
                wait(list(running), timeout=REFRESH, return_when="FIRST_COMPLETED")
    return results, failed


def _outcome(fut: Future) -> dict[str, Any] | str:
    """The task's result, or why it failed (one line)."""
    from distributed.scheduler import KilledWorker

    try:
        return fut.result()
    except KilledWorker:
        return (
            "it killed its worker repeatedly (out of memory? see the worker logs); its "
            "runs' checkpoints are kept"
        )
    except Exception as e:  # the group's own error, after its retries
        first = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {first}"
