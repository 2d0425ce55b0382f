"""Extraction scaling on Dask: images/s with 1, 2 and N workers on the same data, one run.

    python benchmarks/extract_scaling.py --random-init        # CPU: demo backbone, 384 images
    python benchmarks/extract_scaling.py --workers 1,2,8 --images 4096 --model vit_b \
        --random-init --cluster cuda                          # GPUs: one worker per GPU

Every mode writes fresh stores of the same rows, ``--repeats`` times; the best run counts
(the machine may be shared). ``img_s`` is the extraction window the result reports (store
metadata already written; for Dask it includes each worker loading the backbone);
``wall_img_s`` is the whole call. A warm-up run per cluster imports torch in the workers.
The in-process baseline uses one torch thread and no decoding processes, like one Dask
CPU worker. Targets: Dask-1 within 10% of in-process;
near-linear scaling while the disk keeps up (not on a few shared CPU cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, print_table, save

from losa_cache.distributed import extract_distributed
from losa_cache.extract import ExtractConfig, extract


def config(args: argparse.Namespace, store: Path, images: int | None = None) -> ExtractConfig:
    return ExtractConfig(
        model=args.model,
        random_init=args.random_init,
        dataset=args.dataset,
        store=str(store),
        layers=args.layers,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=0,
        limit=images or args.images,
        splits=[args.split],
        shard_rows=args.shard_rows,
        chunk_rows=args.chunk_rows,
    )


def in_process(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(config(args, folder / "warm.zarr", args.batch_size), progress=False)
        runs = [
            timed(extract, config(args, folder / f"inproc{i}.zarr")) for i in range(args.repeats)
        ]
    finally:
        torch.set_num_threads(threads)
    return row("in-process", 1, runs)


def on_dask(args: argparse.Namespace, folder: Path, workers: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    if args.cluster == "cuda":
        from dask_cuda import LocalCUDACluster

        cluster = LocalCUDACluster(n_workers=workers, threads_per_worker=1)
    else:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            dashboard_address=None,
            host="127.0.0.1",
            silence_logs=logging.ERROR,
        )
    with cluster, Client(cluster) as client:
        warm = config(args, folder / f"warm{workers}.zarr", args.shard_rows * workers)
        extract_distributed(warm, client=client, progress=False)
        runs = [
            timed(
                extract_distributed,
                config(args, folder / f"dask{workers}-{i}.zarr"),
                client=client,
                shards_per_task=args.shards_per_task,
            )
            for i in range(args.repeats)
        ]
    return row("dask", workers, runs)


def timed(fn: Any, cfg: ExtractConfig, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(cfg, progress=False, **kwargs)
    return result, time.perf_counter() - t0


def row(mode: str, workers: int, runs: list[tuple[Any, float]]) -> dict[str, Any]:
    """The best of the repeats, and every repeat's img/s (to show the noise)."""
    result, wall = min(runs, key=lambda r: r[0].seconds)
    return {
        "mode": mode,
        "workers": workers,
        "images": result.written,
        "seconds": result.seconds,
        "img_s": result.images_per_s,
        "wall_s": round(wall, 3),
        "wall_img_s": round(result.written / wall, 2),
        "all_img_s": [r.images_per_s for r, _ in runs],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--split", default="train")
    p.add_argument("--images", type=int, default=384)
    p.add_argument("--layers", default="all")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-rows", type=int, default=32, help="one Dask task per shard")
    p.add_argument("--chunk-rows", type=int, default=16)
    p.add_argument("--workers", default=f"1,2,{os.cpu_count() or 1}", help="Dask worker counts")
    p.add_argument("--cluster", choices=["local", "cuda"], default="local")
    p.add_argument("--shards-per-task", type=int, default=None, help="default: auto")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    counts = sorted({int(w) for w in args.workers.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        rows = [in_process(args, Path(tmp))]
        rows += [on_dask(args, Path(tmp), n) for n in counts]
    base = next((r for r in rows if r["mode"] == "dask" and r["workers"] == 1), None)
    for r in rows[1:]:
        if base:
            r["speedup"] = round(r["img_s"] / base["img_s"], 3)
            r["efficiency"] = round(r["speedup"] / r["workers"], 3)
    overhead = 1 - base["img_s"] / rows[0]["img_s"] if base else None
    print(f"device: {device_info()}  cpu cores: {os.cpu_count()}")
    cols = ["mode", "workers", "images", "seconds", "img_s", "speedup", "efficiency"]
    print_table(rows, [*cols, "wall_s", "wall_img_s", "all_img_s"])
    if overhead is not None:
        print(f"Dask 1-worker overhead vs in-process: {overhead:.1%} (target: <= 10%)")
    payload = {"args": vars(args), "rows": rows, "dask1_overhead": overhead}
    print(f"results: {save('extract_scaling', payload)}")


if __name__ == "__main__":
    main()
