"""One-pass sweep vs the same configs trained one after another, from disk and from memory.

    python benchmarks/sweep.py                  # CPU: demo data, demo (or vit_test) backbone
    python benchmarks/sweep.py --store S.zarr   # an existing store

The 16 configs: LoSA, rank 4/8/16/64 x layers evenly:1/evenly:3 x lr 0.01/0.05, each
trained for --epochs with a validation and a test pass at the end and an adapter saved,
in two ways over the same store:

* ``sequential``: ``losa_cache.train.train`` 16 times, one config after the other;
* ``sweep``: ``run_sweep`` once, every batch read once and fed to all 16 (memory
  profiling for the groups included; the img/s benchmark of each config is off).

and two storage settings: ``disk`` (``--cache none``: every epoch streams from the
store; its files are evicted from the page cache with posix_fadvise(DONTNEED) before
every run, residency checked with mincore; drop_caches needs root) and ``memory``
(``--cache ram``: each run reads the store once into RAM, the files in page cache).
A third setting, ``s3``, streams (``--cache none``) from a copy of the store on an
S3 API served by moto in a separate process on 127.0.0.1: a stand-in for a remote store
whose reads are expensive (here they cost the server's CPU on the same 2 cores).
Reported: wall seconds (best of --repeats, the two ways alternating which goes first:
the CPU is shared), bytes read from the store, config-images trained per second,
and whether the two ways agree (final weights / test accuracy per config). Also the
time of one cold read pass alone (no model), which bounds what sharing reads can save:
with R = one read pass and C = the 16 configs' compute, speedup <= (16R + C) / (R + C).

Targets (issue 4): sweep >= 8x faster from disk, not slower from memory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, print_table, save

GRID = {
    "method": ["losa"],
    "rank": [4, 8, 16, 64],
    "layers": ["evenly:1", "evenly:3"],
    "lr": [0.01, 0.05],
}


def pick_model() -> tuple[str, bool]:
    """The embedded demo backbone if its weights ship, else timm's vit_test (random)."""
    from importlib import resources

    from losa_cache.backbone.demo import DEMO_WEIGHTS

    if resources.files("losa_cache.assets").joinpath(DEMO_WEIGHTS).is_file():
        return "demo", False
    return "vit_test", True


def build_store(folder: Path, limit: int | None) -> tuple[str, str]:
    from losa_cache.extract import ExtractConfig, extract

    model, random_init = pick_model()
    path = str(folder / "bench.zarr")
    t0 = time.perf_counter()
    res = extract(
        ExtractConfig(
            model=model,
            random_init=random_init,
            dataset="demo",
            store=path,
            dtype="float16",
            limit=limit,
        ),
        progress=False,
    )
    print(
        f"store: {model}{' (random init)' if random_init else ''}, {res.num_images} images, "
        f"{res.bytes_written / 1e6:,.1f} MB in {time.perf_counter() - t0:.1f} s"
    )
    return path, model + (" random-init" if random_init else "")


def store_files(store: str) -> list[Path]:
    return [p for p in (Path(store) / "features").rglob("*") if p.is_file()]


def evict(store: str) -> dict[str, Any]:
    from train import drop_page_cache  # benchmarks/train.py: fadvise, then drop_caches

    return drop_page_cache(store_files(store), force_global=False)


@contextlib.contextmanager
def s3_copy(store: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The store uploaded to a moto S3 server (own process); yields (url, options)."""
    import boto3
    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        for _ in range(100):
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:  # server still starting
                time.sleep(0.1)
        options = {
            "key": "test",
            "secret": "test",
            "endpoint_url": endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
        }
        s3fs.S3FileSystem(**options).put(store, "bench/bench.zarr", recursive=True)
        yield "s3://bench/bench.zarr", options
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sequential(cfg: Any, disk: bool, folder: Path, options: dict | None = None) -> dict[str, Any]:
    """Each config alone with ``train()``, evicting the store before each (disk)."""
    from losa_cache.store import open_store
    from losa_cache.sweep import expand_runs
    from losa_cache.train import train

    store = open_store(cfg.store, options)
    runs = expand_runs(cfg, store.depth, store.layers, store.default_task)
    wall, nbytes, images, out, evictions = 0.0, 0, 0, {}, []
    for r in runs:
        t = dataclasses.replace(r.train, out=str(folder / r.id), cache=cfg.cache)
        t = dataclasses.replace(t, eval_every=10**9)  # validate once, at the end
        if disk:
            evictions.append(evict(cfg.store)["evicted"])
        t0 = time.perf_counter()
        m = train(t, progress=False, storage_options=options)
        wall += time.perf_counter() - t0
        nbytes += m["bytes_read"]
        images += m["train_images"]
        out[r.id] = {"test_acc": m["test_acc"], "dir": t.out}
    return {
        "wall_s": wall,
        "bytes_read": nbytes,
        "config_images": images,
        "runs": out,
        "evicted_every_run": all(evictions) if disk else None,
    }


def one_pass(cfg: Any, disk: bool, options: dict | None = None) -> dict[str, Any]:
    from losa_cache.sweep import run_sweep

    evicted = evict(cfg.store)["evicted"] if disk else None
    t0 = time.perf_counter()
    res = run_sweep(cfg, progress=False, storage_options=options)
    wall = time.perf_counter() - t0
    s = res["summary"]
    return {
        "wall_s": wall,
        "bytes_read": s["bytes_read"],
        "config_images": s["config_images"],
        "groups": len(s["groups"]),
        "mode": s["mode"],
        "evicted": evicted,
        "runs": {
            r["run"]: {"test_acc": r["test_acc"], "dir": r["adapter"]} for r in res["results"]
        },
    }


def agreement(seq: dict[str, Any], swp: dict[str, Any]) -> dict[str, Any]:
    """Same final weights / test accuracy for each config, both ways?"""
    from safetensors.torch import load_file

    same, dacc = 0, 0.0
    for rid, a in seq["runs"].items():
        b = swp["runs"][rid]
        wa = torch.load(Path(a["dir"]) / "checkpoint.pt", weights_only=True)["model"]
        wb = load_file(str(Path(b["dir"]) / "adapter.safetensors"))
        same += all(torch.equal(wa[k], wb[k]) for k in wa)
        dacc = max(dacc, abs(a["test_acc"] - b["test_acc"]))
    return {"identical_weights": f"{same}/{len(seq['runs'])}", "max_test_acc_diff": dacc}


def read_pass(store_path: str, layers: list[int]) -> dict[str, Any]:
    """One cold epoch of the training rows, needed blocks, no model: the read cost R."""
    from losa_cache.store import open_store
    from losa_cache.train import StoreReader, labelled_rows

    store = open_store(store_path)
    rows, labels = labelled_rows(store, "train", None)
    evict(store_path)
    t0 = time.perf_counter()
    with StoreReader(store, rows, labels, layers, 128) as reader:
        for _ in reader.eval_batches():
            pass
        nbytes = reader.bytes_read
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "bytes": nbytes, "mb_s": nbytes / seconds / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="existing store (default: build one from the demo data)")
    ap.add_argument("--limit", type=int, default=None, help="images per split when building")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 shared cores)")
    ap.add_argument("--modes", default="disk,memory,s3", help="disk | memory | s3, commas")
    ap.add_argument("--repeats", type=int, default=3, help="best-of-N wall time per way")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (every run, both ways)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from losa_cache.store import open_store

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        store, model = (args.store, "given") if args.store else build_store(folder, args.limit)
        depth = open_store(store).depth
        layers = sorted({depth - 1, *(k * depth // 3 - 1 for k in (1, 2, 3))})
        reads = read_pass(store, layers)
        print(
            f"one cold read pass of blocks {layers}: {reads['bytes'] / 1e6:,.1f} MB in "
            f"{reads['seconds']:.2f} s ({reads['mb_s']:,.0f} MB/s)"
        )
        table, results = [], {}
        for mode in args.modes.split(","):
            with contextlib.ExitStack() as stack:
                url, options = store, None
                if mode == "s3":
                    url, options = stack.enter_context(s3_copy(store))
                results[mode], rows = compare(mode, url, options, folder, args)
                table += rows
    print_table(table, ["store", "way", "configs", "wall_s", "MB_read", "config_img_s", "speedup"])
    path = save(
        "sweep",
        {
            "model": model,
            "grid": GRID,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "read_pass": reads,
            "results": results,
            "table": table,
            "device": device_info(),
        },
    )
    print(f"saved {path}")


def compare(
    mode: str, store: str, options: dict | None, folder: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sequential vs one pass for one storage setting: results and table rows."""
    from losa_cache.sweep import SweepConfig

    disk = mode == "disk"
    seqs, swps = [], []
    for rep in range(args.repeats):  # alternate who goes first: the 2 cores are shared
        cfg = SweepConfig(
            store=store,
            out=str(folder / f"sweep-{mode}-{rep}"),
            epochs=args.epochs,
            batch_size=args.batch_size,
            cache="ram" if mode == "memory" else "none",
            device=args.device,
            workers=4,
            speed_batches=0,
            eval_every=10**9,
            **GRID,
        )
        for way in ("seq", "sweep") if rep % 2 == 0 else ("sweep", "seq"):
            if way == "seq":
                seqs.append(sequential(cfg, disk, folder / f"seq-{mode}-{rep}", options))
            else:
                swps.append(one_pass(cfg, disk, options))
    seq = min(seqs, key=lambda r: r["wall_s"])  # best of the repeats, each way
    swp = min(swps, key=lambda r: r["wall_s"])
    result = {
        "sequential": _drop(seq),
        "sweep": _drop(swp),
        "agreement": agreement(seq, swp),
        "speedup": seq["wall_s"] / swp["wall_s"],
        "wall_s_all": {
            "sequential": [r["wall_s"] for r in seqs],
            "sweep": [r["wall_s"] for r in swps],
        },
    }
    rows = [
        {
            "store": mode,
            "way": name,
            "configs": len(seq["runs"]),
            "wall_s": r["wall_s"],
            "MB_read": r["bytes_read"] / 1e6,
            "config_img_s": r["config_images"] / r["wall_s"],
            "speedup": seq["wall_s"] / r["wall_s"],
        }
        for name, r in (("sequential", seq), ("sweep", swp))
    ]
    print(f"{mode}: agreement {result['agreement']}, speedup {result['speedup']:.2f}x")
    return result, rows


def _drop(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "runs"}


if __name__ == "__main__":
    main()
