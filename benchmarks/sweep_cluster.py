"""A sweep on Dask: in-process vs 1 and 2 local workers, and a worker killed halfway.

    python benchmarks/sweep_cluster.py            # ViT-B-shaped store (random init), 8 groups
    python benchmarks/sweep_cluster.py --quick    # vit_micro, seconds: checks the script

One compute-bound sweep: 8 LoSA configs (ranks x lrs, every block), each a group of its
own (``--memory-budget 1``), so the cluster has 8 tasks to place. Trained four ways on
the same machine and store, one run each:

* ``in-process``: ``run_sweep`` without a cluster (torch threads: --threads);
* ``1 worker`` / ``2 workers``: ``--scheduler`` to a LocalCluster started beforehand
  (one thread per worker; its start-up is timed apart, as a warm cluster's sweep is what
  scales);
* ``2 workers, one killed``: SIGKILL of a busy worker once half the groups are done; Dask
  reruns its task elsewhere, which resumes the group's runs from their checkpoints;
* ``2 processes, no Dask``: the ceiling: the learning rates split over two plain
  processes (started and warmed beforehand) that each run an in-process sweep at once.

Reported: wall seconds of ``run_sweep``, config-images per second, the ratios (targets of
issue 22 on a 2-core machine: 1 worker within 10% of in-process, 2 workers >= 1.7x one
worker), each worker's busy seconds, and whether every member equals the in-process
sweep's (adapter weights bit for bit). A box with several GPUs measures scaling per GPU
with ``--cluster cuda``; this script's ways are CPU processes (no GPU here).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, print_table, save

FULL = {
    "model": "vit_b",
    "images": 64,
    "steps": 60,
    "batch_size": 16,
    "rank": [16, 64],
    "lr": [0.01, 0.02, 0.05, 0.1],
}
QUICK = {
    "model": "vit_micro",
    "images": 24,
    "steps": 12,
    "batch_size": 8,
    "rank": [4, 8],
    "lr": [0.01, 0.02, 0.05, 0.1],
}


def build_store(folder: Path, model: str, images: int) -> str:
    from losa_cache.extract import ExtractConfig, extract

    path = str(folder / "bench.zarr")
    t0 = time.perf_counter()
    res = extract(
        ExtractConfig(
            model=model,
            random_init=True,
            dataset="demo",
            store=path,
            layers="all",
            dtype="float16",
            limit=images,
            workers=0,
        ),
        progress=False,
    )
    print(
        f"store: {model} (random init), {res.num_images} images, "
        f"{res.bytes_written / 1e6:,.1f} MB in {time.perf_counter() - t0:.1f} s"
    )
    return path


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[tuple[str, Any, float]]:
    """A LocalCluster of ``workers`` single-threaded processes: (address, client, start s)."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        client.run(lambda: __import__("losa_cache.sweep.cluster"))  # warm: torch, the task code
        yield cluster.scheduler_address, client, time.perf_counter() - t0


def kill_halfway(client: Any, out: Path, groups: int, log: dict[str, Any]) -> threading.Thread:
    """SIGKILL a busy worker (of the cluster this script started) once half are done."""

    def run() -> None:
        while len(list((out / "groups").glob("*.json"))) < groups // 2:
            time.sleep(0.05)
        while True:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                break
            time.sleep(0.05)
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        log.update(killed=busy[0], at_s=round(time.perf_counter() - log["t0"], 2))
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def one(way: str, cfg: Any) -> dict[str, Any]:
    from losa_cache.sweep import run_sweep

    t0 = time.perf_counter()
    res = run_sweep(cfg, progress=False)
    wall = time.perf_counter() - t0
    s = res["summary"]
    busy = {
        w: round(v["busy_seconds"], 2) for w, v in s.get("cluster", {}).get("workers", {}).items()
    }
    return {
        "way": way,
        "wall_s": round(wall, 2),
        "config_images": s["config_images"],
        "img_s": round(s["config_images"] / wall, 1),
        "groups": len(s["groups"]),
        "busy_s": busy,
        "res": res,
    }


def _warm(_: int) -> int:
    import losa_cache.sweep.runner  # noqa: F401  (torch, the training code)

    torch.set_num_threads(1)
    return os.getpid()


def _part(cfg: Any) -> tuple[int, float, float]:
    """(config images, start, end): the starts and ends show the parts overlapped."""
    from losa_cache.sweep import run_sweep

    t0 = time.time()
    images = run_sweep(cfg, progress=False)["summary"]["config_images"]
    return images, t0, time.time()


def plain_processes(cfg: Any, n: int) -> dict[str, Any]:
    """The sweep's learning rates split over ``n`` plain processes training at once."""
    import multiprocessing

    parts = [dataclasses.replace(cfg, out=f"{cfg.out}-{i}", lr=cfg.lr[i::n]) for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        assert len(set(pool.map(_warm, range(n), chunksize=1))) == n
        t0, start = time.perf_counter(), time.time()
        done = pool.map(_part, parts, chunksize=1)
        wall = time.perf_counter() - t0
    images = sum(n for n, _, _ in done)
    return {
        "spans_s": [[round(a - start, 1), round(b - start, 1)] for _, a, b in done],
        "way": f"{n} processes, no Dask",
        "wall_s": round(wall, 2),
        "config_images": images,
        "img_s": round(images / wall, 1),
        "groups": len(cfg.lr) * len(cfg.rank),
        "busy_s": {},
        "res": None,
    }


def agree(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    from safetensors.torch import load_file

    def weights(res: dict) -> dict[str, dict]:
        return {
            f"{r['task']}/{r['run']}": load_file(str(Path(r["adapter"]) / "adapter.safetensors"))
            for r in res["results"]
        }

    if a["res"] is None:  # the plain processes' runs are named in their own sweeps
        return None
    x, y = weights(a["res"]), weights(b["res"])
    return x.keys() == y.keys() and all(all(torch.equal(x[k][n], y[k][n]) for n in x[k]) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    ap.add_argument("--store", help="an existing store (default: build one)")
    ap.add_argument("--threads", type=int, default=1, help="in-process torch threads")
    ap.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    args = ap.parse_args()
    size = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-cluster-") as tmp:
        folder = Path(tmp)
        store = args.store or build_store(folder, size["model"], size["images"])
        rows, extra = run_all(store, folder, size)
        for r in rows:  # while the runs' folders exist
            r["same_as_in_process"] = agree(r, rows[0])
    ref = rows[0]
    one_worker = next(r for r in rows if r["way"] == "1 worker")
    two = next(r for r in rows if r["way"] == "2 workers")
    killed = next(r for r in rows if r["way"] == "2 workers, one killed")
    plain = next(r for r in rows if r["way"] == "2 processes, no Dask")
    for r in rows:
        r["vs_in_process"] = round(r["img_s"] / ref["img_s"], 3)
        r["vs_1_worker"] = round(r["img_s"] / one_worker["img_s"], 3)
    print_table(
        rows,
        ["way", "wall_s", "img_s", "vs_in_process", "vs_1_worker", "groups", "same_as_in_process"],
    )
    for r in rows:
        if r["busy_s"]:
            print(f"{r['way']}: busy seconds per worker {r['busy_s']}")
        if r.get("spans_s"):
            print(f"{r['way']}: each process's (start, end) seconds {r['spans_s']}")
    payload = {
        "size": size,
        "store": args.store,
        "threads": args.threads,
        **extra,
        "ways": [{k: v for k, v in r.items() if k != "res"} for r in rows],
        "ratios": {
            "1_worker_vs_in_process": one_worker["vs_in_process"],
            "2_workers_vs_1_worker": two["vs_1_worker"],
            "kill_cost_vs_2_workers": round(killed["wall_s"] / two["wall_s"], 3),
            "2_processes_no_dask_vs_1_worker": plain["vs_1_worker"],
            "2_workers_vs_2_processes_no_dask": round(two["img_s"] / plain["img_s"], 3),
        },
        "targets": {
            "1_worker_within_10pct": one_worker["vs_in_process"] >= 0.9,
            "2_workers_ge_1.7x": two["vs_1_worker"] >= 1.7,
        },
        "note": "CPU processes on one machine; GPU scaling needs a multi-GPU box "
        "(--cluster cuda), not available here",
    }
    print(f"ratios: {payload['ratios']}  targets met: {payload['targets']}")
    print(
        f"({device_info()['name']}; cluster start-up, not in the walls: {extra['cluster_start_s']})"
    )
    if not args.no_save:
        print(f"wrote {save('sweep_cluster' + ('-quick' if args.quick else ''), payload)}")


def run_all(
    store: str, folder: Path, size: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from losa_cache.sweep import SweepConfig

    base = SweepConfig(
        store=store,
        out="",
        method=["losa"],
        rank=size["rank"],
        layers=["all"],
        lr=size["lr"],
        steps=size["steps"],
        batch_size=size["batch_size"],
        device="cpu",
        workers=1,
        amp="fp32",
        batching="loop",
        memory_budget=1,
        costs=False,
        speed_batches=0,
        checkpoint_every=max(1, size["steps"] // 10),
    )
    cfg = lambda name, **kw: dataclasses.replace(base, out=str(folder / name), **kw)
    rows = [one("in-process", cfg("in-process")), plain_processes(cfg("plain"), 2)]
    starts: dict[str, float] = {}
    for n in (1, 2):
        with local_cluster(n) as (address, _client, start):
            starts[f"{n}"] = round(start, 2)
            rows.append(
                one(f"{n} worker{'s' if n > 1 else ''}", cfg(f"local{n}", scheduler=address))
            )
    with local_cluster(2) as (address, client, _):
        log: dict[str, Any] = {"t0": time.perf_counter()}
        c = cfg("killed", scheduler=address)
        thread = kill_halfway(client, Path(c.out), rows[0]["groups"], log)
        rows.append(one("2 workers, one killed", c))
        thread.join(5)
    log.pop("t0")
    return rows, {"cluster_start_s": starts, "kill": log}


if __name__ == "__main__":
    main()
