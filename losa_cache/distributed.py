"""Extraction on a Dask cluster: whole shards per task, the backbone loaded once per worker.

The client creates (or resumes) the store exactly as in-process extraction does, then
submits one task per group of whole shards (all layers of those rows), so no two tasks
ever write the same shard (a partial-shard write is an unlocked read-modify-write in
zarr). Each worker holds the backbone, data set and open store in a worker plugin,
loaded on its first task; a restarted worker gets the plugin again. Shards are computed
in the same batches as in-process and written data first, done marker last, so a task
that dies (or a whole run that is killed) leaves only shards without a marker, which
the next run rewrites: the store ends identical to a single-process run. A data set of
packed files (``wds:`` tar shards, ``hf:`` parquet) is indexed once, on the client, and
travels in the plugin; its tasks are split by those files, so a worker reads only the
tar shards of its own tasks.

The store must be reachable from every worker under the same name: a shared file system,
or an object-store URL (``memory://`` is refused). The client holds the store's lock
(flock, or a lease object on object stores) for the whole run; workers write only the
shards of their own tasks.

    losa-cache extract ... --cluster local:4          # LocalCluster, 4 processes
    losa-cache extract ... --cluster cuda             # dask-cuda, one worker per GPU
    losa-cache extract ... --scheduler tcp://h:8786   # an existing cluster
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
import torch
from distributed import Client, Future, WorkerPlugin, get_worker

from losa_cache.checks import require_at_least
from losa_cache.extract import (
    RESUME,
    ExtractConfig,
    ExtractResult,
    assumed_settings,
    build_identity,
    compute_dtype,
    make_loader,
    open_or_create,
    pick_device,
    prepare,
    progress_bar,
    prune_for,
    resolved_settings,
    run_batches,
    shard_batches,
    store_taps,
)
from losa_cache.store import schema as S
from losa_cache.store.store import (
    StoreError,
    open_group,
    open_store,
    storage_errors,
    storage_options_for,
)
from losa_cache.store.target import inspect_target
from losa_cache.store.writer import ShardWriter, done_shards, identity_diff, store_lock

CLUSTER_CHOICES = "local | local:N | cuda"


# -- which cluster ----------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: a LocalCluster of ``workers`` processes, dask-cuda, or an address."""

    kind: str  # "local" | "cuda" | "scheduler"
    workers: int | None = None
    address: str | None = None


def parse_cluster(cluster: str | None, scheduler: str | None) -> ClusterSpec | None:
    """``--cluster`` / ``--scheduler`` as a spec; None means in-process extraction."""
    if cluster and scheduler:
        raise ValueError("give --cluster or --scheduler, not both")
    if scheduler:
        if "://" not in scheduler:
            raise ValueError(f"--scheduler {scheduler!r}: expected an address like tcp://HOST:8786")
        return ClusterSpec("scheduler", address=scheduler)
    if not cluster:
        return None
    kind, _, count = cluster.partition(":")
    if kind == "cuda" and not count:
        return ClusterSpec("cuda")
    if kind == "local" and (not count or (count.isdigit() and int(count) > 0)):
        return ClusterSpec("local", workers=int(count) if count else None)
    raise ValueError(f"--cluster {cluster!r}: choose {CLUSTER_CHOICES} (N >= 1 worker processes)")


def require_shared_store(store: str, command: str) -> None:
    """Refuse a store Dask workers cannot reach (``memory://`` lives in one process)."""
    if store.startswith("memory://"):
        raise ValueError(
            "memory:// stores live inside one process and Dask workers cannot see them; "
            f"use a path or an object-store URL (s3://...), or {command} without --cluster"
        )


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Client]:
    """A client for ``spec``; a cluster started here is shut down on exit."""
    if spec.kind == "scheduler":
        try:  # connect timeout: distributed.comm.timeouts.connect (dask config / env)
            client = Client(spec.address)
        except (OSError, TimeoutError) as e:
            raise RuntimeError(
                f"cannot reach a Dask scheduler at {spec.address} ({e}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`"
            ) from None
        with client:
            yield client
        return
    with _start_cluster(spec) as cluster, Client(cluster) as client:
        yield client


def _start_cluster(spec: ClusterSpec) -> Any:
    if spec.kind == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise RuntimeError(
                "--cluster cuda needs dask-cuda: `pip install dask-cuda` (or use --cluster local:N)"
            ) from None
        return LocalCUDACluster(threads_per_worker=1, dashboard_address=":0")
    from distributed import LocalCluster

    # one thread per worker: each process owns a model and OpenMP threads would contend
    n = spec.workers or max(1, (torch.multiprocessing.cpu_count() or 1))
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")


# -- on the workers ---------------------------------------------------------------------
@dataclass
class WorkerState:
    """What a worker keeps between tasks of one run."""

    cfg: ExtractConfig
    backbone: Any
    dataset: Any
    rows: list[int]
    sources: list[str]
    device: torch.device
    amp: torch.dtype
    group: Any
    layout: S.Layout


class ExtractorPlugin(WorkerPlugin):
    """Per-worker backbone, data set and open store, loaded once on the first task.

    Loading lazily (not in ``setup``) turns a load failure, e.g. weights missing on one
    machine, into a task error the client reports, instead of a hung registration.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        identity: dict[str, Any],
        storage_options: dict | None,
        dataset: Any = None,
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.storage_options = storage_options
        self.dataset = dataset  # packed data sets: the client's index, never re-read
        self.loads = 0
        self._state: WorkerState | None = None
        self._lock: threading.Lock | None = None

    def setup(self, worker: Any) -> None:
        from losa_cache.train.allocator import heap_for_large_buffers

        heap_for_large_buffers()  # as for sweep groups (unmeasured for extraction)
        self._lock = threading.Lock()

    def teardown(self, worker: Any) -> None:
        self._state = None  # frees the backbone (GPU memory) at the end of the run

    def state(self) -> WorkerState:
        assert self._lock is not None, "plugin used before setup"
        with self._lock:
            if self._state is None:
                self._state = self._load()
                self.loads += 1
            return self._state

    def _load(self) -> WorkerState:
        cfg = ExtractConfig(**self.cfg)
        device = pick_device(cfg.device)
        backbone, dataset, rows, splits, layers = prepare(cfg, device, self.dataset)
        sources = [dataset.samples[r].source for r in rows]
        taps = store_taps(cfg.taps, backbone.depth)
        settings = resolved_settings(cfg, device)  # e.g. precision auto on this device
        dtype = S.parse_dtype(cfg.dtype)
        data = dataset.meta.get("fingerprint")
        mine = build_identity(
            backbone, layers, dtype, sources, splits, taps, settings=settings, data=data
        )
        stored = {**self.identity}
        stored["settings"] = {**assumed_settings(cfg, settings), **stored.get("settings", {})}
        diffs = identity_diff(stored, mine)
        if diffs:  # e.g. other weights or another file listing on this machine
            raise StoreError(
                f"worker {get_worker().address} would compute different features than the "
                "store holds:\n  " + "\n  ".join(diffs)
            )
        group = open_group(cfg.store, mode="r+", storage_options=self.storage_options)
        layout = S.Layout.from_dict(group.attrs[S.ROOT_ATTR]["layout"])
        prune_for(backbone, layout)
        amp = compute_dtype(cfg.precision, device)
        return WorkerState(cfg, backbone, dataset, rows, sources, device, amp, group, layout)


def extract_task(shards: list[int], plugin: str) -> dict[str, Any]:
    """Compute and write whole ``shards`` (skipping any already marked done)."""
    worker = get_worker()
    ext: ExtractorPlugin = worker.plugins[plugin]
    st = ext.state()
    done = done_shards(st.group, shards)
    todo = [s for s, d in zip(shards, done, strict=True) if not d]
    batches = shard_batches(st.layout, todo, st.cfg.batch_size)
    # workers=0: Dask worker processes are daemonic and may not start DataLoader workers
    loader = make_loader(st.dataset, st.backbone, st.rows, batches, 0, st.device)
    writer = ShardWriter(st.group, st.layout)
    attempt = uuid.uuid4().hex[:8]  # lets the client's bar restart a retried task at zero
    try:
        for buf, n in run_batches(
            loader,
            batches,
            st.backbone,
            st.layout,
            st.device,
            st.amp,
            st.cfg.strict,
            st.sources,
            lambda _m: None,
        ):
            worker.log_event(plugin, {"task": shards[0], "attempt": attempt, "n": n})
            if buf is not None:
                writer.submit(buf.shard, buf.features, buf.status, buf.errors.astype(str))
    finally:
        writer.close()
    return {
        "shards": todo,
        "worker": worker.address,
        "bytes": writer.bytes_written,
        "backbone_loads": ext.loads,
    }


# -- on the client ----------------------------------------------------------------------
def group_shards(
    todo: list[int], per_task: int | None, slots: int, parts: np.ndarray | None = None
) -> list[list[int]]:
    """Consecutive shards, ``per_task`` at a time: the unit of work and of retry.

    ``None`` picks up to 8 shards per task while leaving each of the cluster's ``slots``
    (worker threads) ~3 tasks: within a task, writing one shard overlaps computing the
    next; across tasks it cannot. ``parts`` (per store shard: the packed file, e.g. tar
    shard, its first row is read from; :func:`shard_parts`) splits the work by that file
    first, so a task reads only its own tar shards (and the next one where a store shard
    straddles two).
    """
    if per_task is None:
        per_task = max(1, min(8, len(todo) // (3 * max(1, slots))))
    if per_task < 1:
        raise ValueError(f"shards per task must be >= 1, got {per_task}")
    runs = [todo] if parts is None else [list(g) for _, g in groupby(todo, lambda s: parts[s])]
    return [run[i : i + per_task] for run in runs for i in range(0, len(run), per_task)]


def shard_parts(layout: S.Layout, dataset: Any, rows: list[int]) -> np.ndarray | None:
    """The packed file (tar shard, parquet file) each store shard's first row is read
    from; None for data sets of one file per image."""
    row_parts = getattr(dataset, "row_parts", None)
    if row_parts is None:
        return None
    firsts = np.asarray(rows, dtype=np.int64)[np.arange(layout.num_shards) * layout.shard_rows]
    return row_parts()[firsts]


def shard_rows(layout: S.Layout, shards: list[int]) -> int:
    """Images in ``shards`` (the last shard may be short)."""
    return sum(stop - start for start, stop in map(layout.shard_range, shards))


class _Progress:
    """One bar for the whole cluster, fed by the workers' per-batch events.

    A retried task's count restarts from zero, so images are never counted twice;
    finished tasks count their shards' full row count.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = progress_bar(total, enabled)
        self.partial: dict[int, tuple[str, int]] = {}  # task -> (attempt, images)
        self.finished = 0
        self.done_tasks: set[int] = set()
        self.lock = threading.Lock()

    def on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, msg = event
        with self.lock:
            if msg["task"] in self.done_tasks:
                return  # a late event of a finished task
            attempt, n = self.partial.get(msg["task"], (msg["attempt"], 0))
            n = n if attempt == msg["attempt"] else 0
            self.partial[msg["task"]] = (msg["attempt"], n + msg["n"])

    def task_done(self, task: int, rows: int) -> None:
        with self.lock:
            self.partial.pop(task, None)
            self.done_tasks.add(task)
            self.finished += rows

    def refresh(self, workers: int, shards_done: int, shards_total: int) -> None:
        with self.lock:
            n = min(self.finished + sum(n for _, n in self.partial.values()), self.bar.total)
        self.bar.update(n - self.bar.n)
        self.bar.set_postfix(workers=workers, shards=f"{shards_done}/{shards_total}")

    def close(self) -> None:
        self.bar.close()


def extract_distributed(
    cfg: ExtractConfig,
    cluster: str | None = None,
    scheduler: str | None = None,
    client: Client | None = None,
    progress: bool = True,
    storage_options: dict | None = None,
    retries: int = 3,
    shards_per_task: int | None = None,
) -> ExtractResult:
    """Extract (or resume) ``cfg`` on a Dask cluster; the store equals an in-process run's.

    Give ``cluster`` ("local:N" | "cuda"), ``scheduler`` ("tcp://HOST:PORT") or a
    connected ``client``. ``retries`` re-runs a task whose code raised; a task whose
    worker died is rescheduled by Dask itself. ``shards_per_task``: see :func:`group_shards`.
    """
    require_at_least("retries", retries, 0)
    require_at_least("shards_per_task", shards_per_task, 1)
    require_shared_store(cfg.store, "extract")
    if cfg.extend:
        raise ValueError("--extend runs in one process: drop --cluster/--scheduler")
    if cfg.views:
        raise ValueError("--views runs in one process (for now): drop --cluster/--scheduler")
    with storage_errors(cfg.store, RESUME):  # refuse a bad path before any cluster starts
        inspect_target(cfg.store, storage_options_for(cfg.store, storage_options))
    if client is not None:
        return _run(cfg, client, progress, storage_options, retries, shards_per_task)
    spec = parse_cluster(cluster, scheduler)
    if spec is None:
        raise ValueError(f"give a cluster ({CLUSTER_CHOICES}), a scheduler address or a client")
    with connect(spec) as c:
        return _run(cfg, c, progress, storage_options, retries, shards_per_task)


def _run(
    cfg: ExtractConfig,
    client: Client,
    progress: bool,
    storage_options: dict | None,
    retries: int,
    shards_per_task: int | None,
) -> ExtractResult:
    options = storage_options_for(cfg.store, storage_options)
    # the client only needs the backbone's fingerprint: keep it off the workers' GPUs
    backbone, dataset, rows, splits, layers = prepare(cfg, torch.device("cpu"))
    # where the workers compute (resolves --precision auto); a worker that resolves it
    # otherwise refuses to write (ExtractorPlugin._load)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    workers_device = torch.device(auto if cfg.device == "auto" else cfg.device)
    with storage_errors(cfg.store, RESUME), store_lock(cfg.store, options) as lock:
        group, layout, resumed = open_or_create(
            cfg, backbone, dataset, rows, splits, layers, options, workers_device
        )
        del backbone
        identity = group.attrs[S.ROOT_ATTR]["identity"]
        todo = [int(s) for s in np.flatnonzero(~done_shards(group))]
        t0 = time.perf_counter()
        parts = shard_parts(layout, dataset, rows)
        shipped = dataset if parts is not None else None  # indexed once, here
        results = _submit_and_wait(
            client, cfg, identity, options, layout, todo, progress, retries, shards_per_task,
            lock, parts, shipped,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        missing = np.flatnonzero(~done_shards(group))
        if len(missing):
            raise RuntimeError(
                f"{len(missing)} shards still unmarked after every task finished "
                f"(first: {missing[:5].tolist()}); rerun the same command to resume"
            )
    written = shard_rows(layout, todo)
    return ExtractResult(
        store=cfg.store,
        num_images=layout.num_images,
        written=int(written),
        skipped=open_store(cfg.store, options).skipped(),
        shards_written=len(todo),
        shards_total=layout.num_shards,
        resumed=resumed,
        seconds=round(seconds, 3),
        images_per_s=round(written / seconds, 2) if seconds and written else 0.0,
        bytes_written=sum(r["bytes"] for r in results),
    )


def _submit_and_wait(
    client: Client,
    cfg: ExtractConfig,
    identity: dict[str, Any],
    options: dict | None,
    layout: S.Layout,
    todo: list[int],
    progress: bool,
    retries: int,
    shards_per_task: int | None,
    lock: Any,
    parts: np.ndarray | None = None,
    dataset: Any = None,
) -> list[dict[str, Any]]:
    """Register the worker plugin, run one task per shard group, feed one progress bar."""
    if not todo:
        return []
    name = f"losa-extract-{uuid.uuid4().hex[:12]}"  # per run: concurrent runs never share
    groups = group_shards(todo, shards_per_task, sum(client.nthreads().values()), parts)
    rows = {g[0]: shard_rows(layout, g) for g in groups}
    bar = _Progress(sum(rows.values()), progress)
    bar.bar.set_postfix_str("starting workers")  # fresh workers import torch: seconds
    plugin = ExtractorPlugin(cfg.to_dict(), identity, options, dataset)
    with plugin_run(client, name, plugin, bar):
        keys = [f"{name}-shards-{g[0]}" for g in groups]
        futures = client.map(extract_task, groups, plugin=name, retries=retries, key=keys)
        try:
            return _wait(client, futures, groups, rows, bar, layout, lock)
        except BaseException:
            client.cancel(futures)
            raise


@contextlib.contextmanager
def plugin_run(client: Client, name: str, plugin: WorkerPlugin, bar: Any) -> Iterator[None]:
    """``plugin`` on every worker and the workers' events to ``bar.on_event``, both under
    ``name``, for one run; whatever ends it, the bar closes and both are removed."""
    client.register_plugin(plugin, name=name)
    client.subscribe_topic(name, bar.on_event)
    try:
        yield
    finally:
        bar.close()
        client.unsubscribe_topic(name)
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(name)


def _wait(
    client: Client,
    futures: list[Future],
    groups: list[list[int]],
    rows: dict[int, int],
    bar: _Progress,
    layout: S.Layout,
    lock: Any,
) -> list[dict[str, Any]]:
    """Collect results as tasks finish (polled often: the last one must not wait on a
    sleep); the bar and worker count refresh a few times a second."""
    pending = dict(zip(futures, groups, strict=True))
    results: list[dict[str, Any]] = []
    shards_done = layout.num_shards - sum(len(g) for g in groups)
    workers, asked = 0, 0.0
    while pending:
        for fut in [f for f in pending if f.done()]:
            group = pending.pop(fut)
            results.append(_result(fut, group))
            bar.task_done(group[0], rows[group[0]])
            shards_done += len(group)
        lock.check()
        if time.monotonic() - asked > 1.0:
            workers, asked = len(client.scheduler_info(n_workers=-1)["workers"]), time.monotonic()
        bar.refresh(workers, shards_done, layout.num_shards)
        if pending:
            time.sleep(0.05)
    return results


def _result(fut: Future, group: list[int]) -> dict[str, Any]:
    from distributed.scheduler import KilledWorker

    try:
        return fut.result()
    except KilledWorker:
        raise RuntimeError(
            f"the task for shards {group} killed its worker repeatedly (out of memory? see "
            "the worker logs); finished shards are kept: rerun the same command to resume"
        ) from None
