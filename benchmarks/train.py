"""Side-network training speed and memory: streamed store vs in-memory cache vs live backbone.

    python benchmarks/train.py                 # CPU: demo (or vit_test) backbone, demo data
    python benchmarks/train.py --model vit_b --random-init --dataset imagefolder:DIR  # on a GPU
    python benchmarks/train.py --store S.zarr  # an existing store; live mode uses its settings

One run, one store, one side network (default LoSA r=16 on all blocks), same batches:

* training img/s, the mean over --batches steps after --warmup steps (the trainer's
  steady-state rate), and peak training memory, at batch 1 and at --batch-size, for
  ``stream`` (--cache none), ``ram`` (--cache ram), ``gpu`` (--cache gpu, CUDA only) and
  ``live`` (the frozen backbone runs on every batch). Each measurement runs in a fresh
  subprocess so its peak is its own. CUDA: torch.cuda.max_memory_allocated, reset when
  training starts (side network, optimizer, activations, batches, cache, backbone). CPU:
  peak RSS minus the RSS before training, i.e. VmHWM reset through /proc/self/clear_refs
  once torch and losa_cache are imported (library code is not counted; ru_maxrss cannot
  be used: after fork+exec it starts at the parent's peak). Live mode's decoding
  processes are measured apart (summed PSS, sampled every 0.25 s) and shown both ways.
* the raw read bandwidth of the feature shard files the reader needs (read(2) in 8 MiB
  pieces, 1 thread and --workers threads, into one reused buffer and into a buffer per
  file; the fastest is the target's denominator: with warm pages the reused buffer stays
  in the CPU cache, a bound no reader that keeps its bytes can reach, so ``vs_ram`` is
  shown too) and the reader's rate serving shuffled training batches with no model
  (``reader alone``). When those files are under --io-min-mb (the demo store: 0.3 GB,
  a cold pass of ~0.1 s that times start-up, not reads) this part runs on a copy of the
  store tiled to that size (same layout, its real rows repeated). Both run under
  the same page-cache state: ``cold`` (files evicted before each pass with
  posix_fadvise(DONTNEED), falling back to /proc/sys/vm/drop_caches; one pass, one
  epoch) when eviction works, and ``warm`` (files read once first; passes repeated for
  --io-seconds). Residency is checked with mincore before every pass. Reader bytes are
  what its read calls took from the files (/proc/self/io rchar: on-disk, compressed), so
  efficiency = reader file bytes/s / raw bytes/s; logical bytes/s are shown too. ``with
  model`` is the streaming run's read rate at --batch-size: set by how fast the model
  consumes batches, not a reader limit. ``verified`` vs ``unverified`` (warm): the reader
  as it runs, checking every chunk's crc32c (whole chunks read), against the same pass
  reading just the rows, unchecked (LOSA_CACHE_VERIFY=0): what integrity costs.

* ``plain``: the same side network trained by a minimal PyTorch loop (random batches
  indexed from the train rows' features, already in tensors in RAM; same optimizer, lr,
  amp): what a user would write by hand; the reader's cost is the gap to it.
* every mode in bf16 and fp32 (``--amps``), each row naming its precision.
* the roofline: the side network's training FLOPs per image (forward + backward, counted
  by FlopCounterMode) x img/s, against bf16 and fp32 matmul peaks (--peak-size cubed,
  timed in this run) and the features' bytes per image x img/s against the memory
  bandwidth measured in this run (a large copy).

Targets (GPU, ViT-B and larger): cached img/s >= 10x live; peak memory at batch 1 cached
<= 25% of live; reader >= 70% of raw bandwidth. CPU (issue 13): stream >= 25x live in
the same precision, stream >= 90% of plain, peak memory at batch 32 <= live's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import mmap
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

# libgomp's default active spin-wait (torch's OpenMP threads keep their cores busy between
# parallel regions) made CPU training img/s bimodal on a loaded 2-vCPU machine once the
# reader's threads stopped running torch ops themselves (1.7 vs ~600 img/s at batch 1):
# passive waiting, here and in the workers, unless the caller chose a policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, extract_store, print_table, save

MiB = 1 << 20
MODES = ("plain", "stream", "ram", "gpu", "live")
AMPS = ("bf16", "fp32")
CACHE_OF = {"stream": "none", "ram": "ram", "gpu": "gpu"}


# ---------------------------------------------------------------------- page cache


def _rss_scale() -> int:
    return 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache (mincore), None where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page, total, resident = mmap.PAGESIZE, 0, 0
        for path in paths:
            size = path.stat().st_size
            if size == 0:
                continue
            with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
                pages = -(-size // page)
                vec = (ctypes.c_ubyte * pages)()
                buf = (ctypes.c_char * size).from_buffer(mm)
                try:
                    rc = libc.mincore(
                        ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec
                    )
                finally:
                    del buf  # release the export before the map closes
                if rc != 0:
                    return None
                total += pages
                resident += int((np.frombuffer(vec, np.uint8) & 1).sum())
        return resident / total if total else None
    except (OSError, AttributeError, ValueError, TypeError):
        return None


def drop_page_cache(paths: list[Path], force_global: bool) -> dict[str, Any]:
    """Evict the files: per-file posix_fadvise(DONTNEED) (no root needed, only these
    files), then, if pages remain or ``force_global``, the global drop_caches (root)."""
    out: dict[str, Any] = {"fadvise": False, "drop_caches": "not tried"}
    if hasattr(os, "posix_fadvise"):
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        out["fadvise"] = True
    res = resident_fraction(paths)
    if force_global or res is None or res > 0.01:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            out["drop_caches"] = "worked"
        except OSError as e:
            out["drop_caches"] = f"failed: {e.strerror or e}"
        res = resident_fraction(paths)
    out["resident_after"] = res
    out["evicted"] = res is not None and res <= 0.01
    return out


def read_rchar() -> int | None:
    """Bytes this process's read calls returned so far (Linux /proc/self/io), all threads."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def raw_read(
    paths: list[Path],
    threads: int,
    min_seconds: float = 0.0,
    block: int = 8 * MiB,
    keep: bool = False,
) -> dict[str, Any]:
    """read(2) the files in ``block`` pieces, whole passes until ``min_seconds`` (0: one
    pass): bytes and seconds. ``keep=False`` reads every piece into the same buffer (it
    stays in the CPU cache: the most a read can do); ``keep=True`` reads each file into a
    buffer of its own size, as a reader that keeps the bytes must (they go to RAM)."""

    def one(path: Path) -> int:
        size = path.stat().st_size if keep else block
        buf = memoryview(np.empty(max(size, 1), np.uint8))
        n = 0
        with path.open("rb", buffering=0) as f:
            while got := f.readinto(buf[n : n + block] if keep else buf):
                n += got
        return n

    resident = resident_fraction(paths)
    nbytes, passes, t0 = 0, 0, time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while passes == 0 or time.perf_counter() - t0 < min_seconds:
            nbytes += sum(pool.map(one, paths))
            passes += 1
    seconds = time.perf_counter() - t0
    return {
        "threads": threads,
        "into": "a buffer per file (RAM)" if keep else f"one reused {block // MiB} MiB buffer",
        "passes": passes,
        "bytes": nbytes,
        "seconds": seconds,
        "mb_s": nbytes / seconds / 1e6,
        "resident_before": resident,
    }


# ---------------------------------------------------------------------- store side


def build_store(args: argparse.Namespace, folder: Path) -> str:
    path = str(folder / "bench.zarr")
    extract_store(
        model=args.model,
        random_init=args.random_init,
        checkpoint=args.checkpoint,
        dataset=args.dataset,
        store=path,
        layers=args.layers,
        dtype=args.dtype,
        limit=args.images,
        workers=args.extract_workers,
    )
    return path


def tile_store(src_path: str, dst: str, copies: int) -> str:
    """A store holding ``src``'s rows ``copies`` times over (same layout, chunks, shards,
    codec; every row in ``train``): a big enough store for I/O timings from a small one.
    Real activations, written by the store's own writer."""
    import dataclasses

    from losa_cache.store import open_store
    from losa_cache.store import schema as S
    from losa_cache.store.writer import ShardWriter, create_store

    src = open_store(src_path)
    layout = dataclasses.replace(src.layout, num_images=src.layout.num_images * copies)
    task = src.default_task
    manifest = dataclasses.replace(
        S.Manifest.from_dict(dict(src.group.attrs[S.ROOT_ATTR])),
        layout=layout.to_dict(),
        splits=["train"],
        tasks=[task],
        default_task=task,
        state="created",
    )
    n, m = layout.num_images, src.layout.num_images
    group = create_store(
        dst,
        layout,
        manifest,
        np.tile(src.sources, copies).tolist(),
        {"train": list(range(n))},
        {task: (np.tile(src.labels(task), copies), src.classes(task))},
    )
    feats = {S.feature_name(b): src.features(b).array[:] for b in layout.layers}
    status = np.tile(src.status, copies)
    writer = ShardWriter(group, layout)
    for shard in range(layout.num_shards):
        lo, hi = layout.shard_range(shard)
        rows = np.arange(lo, hi) % m
        writer.write(
            shard,
            {k: v[rows] for k, v in feats.items()},
            status[lo:hi],
            np.full(hi - lo, "", dtype=str),
        )
    return dst


def io_store(store_path: str, args: argparse.Namespace, folder: Path) -> str:
    """The benchmark's store, or a tiled copy of it when the files the reader needs are
    under --io-min-mb: cold timings of a pass shorter than ~1 s are start-up, not reads."""
    from losa_cache.store.store import is_remote

    if is_remote(store_path) or args.io_min_mb <= 0:
        return store_path
    store, _, _, layers, files = training_reads(store_path, args)
    if sum(f.stat().st_size for f in files) >= args.io_min_mb * 1e6:
        return store_path
    per_copy = store.layout.num_images * store.layout.row_bytes * len(layers)  # all rows train
    copies = max(2, math.ceil(args.io_min_mb * 1e6 / per_copy))
    t0 = time.perf_counter()
    path = tile_store(store_path, str(folder / "io.zarr"), copies)
    print(f"I/O store: the store tiled {copies}x ({time.perf_counter() - t0:.1f} s)")
    return path


def base_config(args: argparse.Namespace, store: str) -> dict[str, Any]:
    """TrainConfig fields shared by every mode: same side network, seed, data, no eval."""
    steps = args.warmup + args.batches
    return {
        "store": store,
        "method": args.method,
        "rank": args.rank,
        "layers": args.layers,
        "seed": 0,
        "steps": steps,
        "log_every": args.warmup,
        "eval_every": steps,
        "checkpoint_every": steps,
        "val_split": "none",
        "test_split": "none",
        "workers": args.workers,
    }


def needed_files(store: Any, rows: Any, layers: tuple[int, ...]) -> list[Path]:
    """Shard files of the needed blocks that hold training rows (local stores only)."""
    from losa_cache.store import schema as S

    shards = np.unique(np.asarray(rows) // store.layout.shard_rows).tolist()
    files = []
    for layer in layers:
        name = S.feature_name(layer)
        meta = store.group[name].metadata
        for s in shards:
            files.append(Path(store.path) / name / meta.encode_chunk_key((s, 0, 0)))
    return [f for f in files if f.is_file()]


def reader_pass(
    store: Any,
    rows: Any,
    labels: Any,
    layers: tuple[int, ...],
    args: argparse.Namespace,
    device: torch.device,
    files: list[Path],
    min_seconds: float = 0.0,
    verify: bool = True,
) -> dict[str, Any]:
    """Shuffled training batches, no model, for one epoch (and at least ``min_seconds``):
    logical and file bytes per second. ``verify=False``: direct reads skip the crc32c
    check of whole chunks and read just the rows (what checking every read costs)."""
    from losa_cache.store.direct import VERIFY_ENV
    from losa_cache.train.reader import StoreReader

    resident = resident_fraction(files)
    with _env(VERIFY_ENV, "1" if verify else "0"):  # read when the arrays are opened
        reader = StoreReader(
            store,
            rows,
            labels,
            layers,
            args.batch_size,
            seed=0,
            device=device,
            workers=args.workers,
        )
        direct = [store.features(layer).direct for layer in layers]
    checked = [d.crc and d.verify for d in direct if d is not None]
    epoch, n = math.ceil(len(rows) / reader.batch_size), 0
    try:
        rchar0, t0 = read_rchar(), time.perf_counter()
        with closing(reader.batches()) as batches:
            while n < epoch or time.perf_counter() - t0 < min_seconds:
                next(batches)
                n += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            logical, rchar1 = reader.bytes_read, read_rchar()
    finally:
        reader.close()
    file_bytes = rchar1 - rchar0 if rchar0 is not None and rchar1 is not None else None
    return {
        "batches": n,
        "seconds": seconds,
        "logical_bytes": logical,
        "logical_mb_s": logical / seconds / 1e6,
        "file_bytes": file_bytes,
        "file_mb_s": file_bytes / seconds / 1e6 if file_bytes else None,
        "resident_before": resident,
        "verified": bool(checked) and all(checked),
    }


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def training_reads(store_path: str, args: argparse.Namespace) -> tuple[Any, ...]:
    """What the training runs read: store, train rows and labels, the side network's
    blocks, and the shard files holding them (local stores)."""
    from losa_cache.store.store import is_remote
    from losa_cache.train import TrainConfig, labelled_rows
    from losa_cache.train.sources import StoreSource, build_side_config, resolve_splits

    cfg = TrainConfig(**base_config(args, store_path))
    source = StoreSource(store_path)
    task = source.task(cfg.task)
    layers = build_side_config(cfg, source.info, len(task.classes)).required_layers
    split = resolve_splits(cfg, source.info.splits)["train"]
    rows, labels = labelled_rows(source.store, str(split), task.task)
    files = [] if is_remote(store_path) else needed_files(source.store, rows, layers)
    return source.store, rows, labels, layers, files


def io_section(store_path: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Raw bandwidth and reader rate under the same page-cache conditions (cold, warm)."""
    from losa_cache.store.store import is_remote

    if is_remote(store_path):
        return {"skipped": "remote store: no local files to read raw"}
    store, rows, labels, layers, files = training_reads(store_path, args)
    out: dict[str, Any] = {
        "store": store_path,
        "store_rows": store.layout.num_images,
        "layers": list(layers),
        "train_rows": len(rows),
        "files": len(files),
        "file_bytes": sum(f.stat().st_size for f in files),
    }
    threads = sorted({1, max(1, args.workers)})
    evict = drop_page_cache(files, args.drop_caches)
    out["eviction"] = evict
    conditions = ["cold", "warm"] if evict["evicted"] else ["warm"]
    for cond in conditions:
        # cold: one pass each, evicted before; warm: files read once first, then passes
        # repeated for --io-seconds so start-up costs do not dominate small stores
        secs = 0.0 if cond == "cold" else args.io_seconds
        raws = []
        for keep in (False, True):
            for t in threads:
                if cond == "cold":
                    drop_page_cache(files, False)
                else:
                    raw_read(files, t)
                raws.append({**raw_read(files, t, secs, keep=keep), "keep": keep})
        if cond == "cold":
            drop_page_cache(files, False)
        rd = reader_pass(store, rows, labels, layers, args, device, files, secs)
        best = max(raws, key=lambda r: r["mb_s"])  # the target's denominator: the fastest
        ram = max((r for r in raws if r["keep"]), key=lambda r: r["mb_s"])
        rate = rd["file_mb_s"] or rd["logical_mb_s"] * _stored_ratio(store)
        out[cond] = {
            "raw": raws,
            "raw_mb_s": best["mb_s"],
            "raw_ram_mb_s": ram["mb_s"],
            "reader": rd,
            "reader_file_mb_s": rate,
            "efficiency": rate / best["mb_s"],
            "efficiency_vs_ram": rate / ram["mb_s"],
            "efficiency_logical": rd["logical_mb_s"] / best["mb_s"],
        }
        if cond == "warm":  # what checking every chunk's crc32c costs the reader
            plain = reader_pass(
                store, rows, labels, layers, args, device, files, secs, verify=False
            )
            out[cond]["reader_unverified"] = plain
            out[cond]["verify_cost"] = 1 - rd["logical_mb_s"] / plain["logical_mb_s"]
    out["file_per_logical"] = (
        out["warm"]["reader"]["file_bytes"] / out["warm"]["reader"]["logical_bytes"]
        if out["warm"]["reader"]["file_bytes"]
        else _stored_ratio(store)
    )
    return out


def _stored_ratio(store: Any) -> float:
    nb = store.nbytes()
    return nb["stored"] / nb["logical"] if nb["stored"] > 0 else 1.0


# ---------------------------------------------------------------------- training runs


def live_settings(store_path: str) -> dict[str, Any]:
    """Live-mode fields that reproduce the store's images (from its extract config)."""
    from losa_cache.store import open_store

    store = open_store(store_path)
    ec = store.manifest.extract_config
    for key in ("input_size", "crop_pct", "interpolation"):
        if ec.get(key) is not None:
            print(
                f"warning: the store was extracted with {key}={ec[key]}, which live mode "
                "cannot repeat: live preprocessing differs"
            )
    if ec.get("splits"):
        print(
            f"warning: the store holds only splits {ec['splits']}: live rows are numbered "
            "over all splits, so batch order differs (same images)"
        )
    return {
        "live": True,
        "store": None,
        "model": ec["model"],
        "checkpoint": ec["checkpoint"],
        "pretrained": ec["pretrained"],
        "random_init": ec["random_init"],
        "init_seed": ec["seed"],
        "dataset": ec["dataset"],
        "data_root": ec["data_root"],
        "limit": ec["limit"],
    }


def run_worker(spec: dict[str, Any], folder: Path, name: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (its own peak RSS / CUDA peak)."""
    spec_path, out_path = folder / f"{name}.spec.json", folder / f"{name}.out.json"
    spec["config"]["out"] = str(folder / name)
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out_path.read_text())


def _vm_status() -> dict[str, int] | None:
    """VmRSS and VmHWM (peak RSS of this process's own memory map) in bytes (Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    out = {
        k: int(v.split()[0]) * 1024
        for k, _, v in (ln.partition(":") for ln in lines)
        if k in ("VmRSS", "VmHWM")
    }
    return out if len(out) == 2 else None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class ChildMemory:
    """Peak summed PSS (else RSS) of this process's child processes (live mode's decoding
    workers and their forkserver), sampled every 0.25 s. PSS splits pages the children
    share; ru_maxrss of children is no use: an exec'd child inherits its parent's peak."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            total = 0
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(Exception):  # a child may exit meanwhile
                    total += _pss(child.pid) or child.memory_info().rss
            self.peak = max(self.peak, total)

    def __enter__(self) -> ChildMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _pss(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("Pss:")), None)
    return int(line.split()[1]) * 1024 if line else None


def worker(spec_path: str, out_path: str) -> None:
    """Child side: import everything, reset the peak-RSS mark, train, report.

    Peak RSS is VmHWM after resetting it (clear_refs) with torch and losa_cache imported,
    minus the RSS then; ru_maxrss cannot be used: after fork+exec it starts at the
    parent's peak. Without /proc it falls back to ru_maxrss (flagged).
    """
    import gc

    import psutil

    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    import losa_cache.train.live  # noqa: F401  (every mode's code loaded before the baseline)
    from losa_cache.train import TrainConfig, train

    cfg = TrainConfig.from_dict(spec["config"])
    if spec["mode"] == "plain":
        Path(out_path).write_text(json.dumps(plain_worker(spec, cfg)))
        return
    gc.collect()
    hwm = _reset_peak_rss() and _vm_status() is not None
    rss0 = psutil.Process().memory_info().rss
    rchar0, t0 = read_rchar(), time.perf_counter()
    with ChildMemory() as kids:
        m = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    rchar1 = read_rchar()
    status = _vm_status()
    if hwm and status is not None:
        peak, method = status["VmHWM"], "VmHWM after clear_refs"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _rss_scale()
        method = "ru_maxrss (includes the parent's peak: upper bound)"
    res = {
        "mode": spec["mode"],
        "batch_size": m["plan"]["batch_size"],
        "img_s": m["images_per_s_steady"],
        "steps": m["step"],
        "measured_images": m["train_images"],
        "train_seconds": m["train_seconds"],
        "setup_and_end_seconds": wall - m["train_seconds"],
        "peak_rss_delta_bytes": peak - rss0,
        "rss_before_bytes": rss0,
        "peak_rss_bytes": peak,
        "rss_method": method,
        "children_peak_bytes": kids.peak,
        "reader_bytes": m["feed"]["bytes_read"],
        "rchar_bytes": rchar1 - rchar0 if rchar0 is not None and rchar1 is not None else None,
        "cache": m["feed"]["cache"]["reason"],
        "amp": m["amp"],
        "device": m["device"],
    }
    if m["device"].startswith("cuda"):
        res["peak_cuda_bytes"] = m["peak_memory_bytes"]
    res["peak_bytes"] = res.get("peak_cuda_bytes", res["peak_rss_delta_bytes"])
    Path(out_path).write_text(json.dumps(res))


def plain_features(cfg: Any) -> tuple[dict[int, torch.Tensor], torch.Tensor, Any]:
    """The train rows' labels and needed blocks as tensors in RAM (storage dtype), and
    the side network's config: what a hand-written loop starts from."""
    from losa_cache.train.reader import StoreReader, labelled_rows
    from losa_cache.train.sources import StoreSource, resolve_splits
    from losa_cache.train.trainer import build_side_config

    source = StoreSource(cfg.store)
    store = source.store
    split = resolve_splits(cfg, source.info.splits)["train"]  # as the trainer picks it
    rows, labels = labelled_rows(store, str(split), cfg.task)
    side = build_side_config(cfg, source.info, len(store.classes(cfg.task)))
    layers = side.required_layers
    feats = {i: [] for i in layers}
    with StoreReader(store, rows, labels, layers, 256, workers=cfg.workers) as reader:
        for batch in reader.eval_batches():
            for i in layers:
                feats[i].append(batch.features[i].clone())
    return {i: torch.cat(v) for i, v in feats.items()}, torch.from_numpy(labels), side


def plain_worker(spec: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """``plain``: a minimal PyTorch training loop over features already in RAM."""
    import gc

    import psutil

    from losa_cache.side import create_side
    from losa_cache.train.optim import build_optimizer
    from losa_cache.train.run import use_amp

    gc.collect()
    hwm = _reset_peak_rss() and _vm_status() is not None
    rss0 = psutil.Process().memory_info().rss
    t_start = time.perf_counter()
    feats, labels, side = plain_features(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    feats = {i: t.to(device) for i, t in feats.items()}
    labels = labels.to(device)
    amp = use_amp(cfg.amp, device)
    plan = cfg.plan(len(labels))
    bs = int(plan["batch_size"])
    torch.manual_seed(cfg.seed)
    model = create_side(side).to(device)
    opt = build_optimizer(
        model, cfg.optimizer, float(plan["lr"]), float(plan["weight_decay"]), cfg.momentum
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    warmup = max(1, int(cfg.log_every or 1))
    t0 = None
    for step in range(int(plan["steps"])):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(len(labels), (bs,), generator=gen).to(device)
        batch = {i: t[idx] for i, t in feats.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - (t0 or t_start)
    timed = (int(plan["steps"]) - warmup) * bs
    status = _vm_status()
    peak = (
        status["VmHWM"]
        if hwm and status is not None
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _rss_scale())
    )
    res = {
        "mode": "plain",
        "batch_size": bs,
        "img_s": timed / seconds,
        "steps": int(plan["steps"]),
        "measured_images": timed,
        "train_seconds": seconds,
        "setup_and_end_seconds": time.perf_counter() - t_start - seconds,
        "peak_rss_delta_bytes": peak - rss0,
        "rss_before_bytes": rss0,
        "peak_rss_bytes": peak,
        "rss_method": "VmHWM after clear_refs" if hwm else "ru_maxrss",
        "children_peak_bytes": 0,
        "reader_bytes": 0,
        "rchar_bytes": None,
        "cache": "features in tensors in RAM (a hand-written loop)",
        "amp": "bf16" if amp else "fp32",
        "device": str(device),
    }
    if device.type == "cuda":
        res["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    res["peak_bytes"] = res.get("peak_cuda_bytes", res["peak_rss_delta_bytes"])
    return res


# ---------------------------------------------------------------------- roofline


def _timed(fn: Any, device: torch.device, min_seconds: float = 0.2) -> float:
    """Seconds per call of ``fn`` (best of repeated passes, after one warm-up call)."""
    fn()
    best, spent = math.inf, 0.0
    while spent < min_seconds or best == math.inf:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return best


def machine_peaks(size: int, device: torch.device) -> dict[str, float]:
    """Matmul GFLOP/s (size^3, bf16 and fp32) and copy bandwidth (GB/s), in this run."""
    out: dict[str, float] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        out[f"{name}_gflop_s"] = 2 * size**3 / _timed(lambda a=a, b=b: a @ b, device) / 1e9
    n = max(1 << 20, size * size * 16)  # fp32 elements: 256 MiB at size 2048
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    src.fill_(1.0)
    out["copy_gb_s"] = 2 * 4 * n / _timed(lambda: dst.copy_(src), device) / 1e9  # read+write
    return out


def training_flops(store_path: str, args: argparse.Namespace) -> dict[str, float]:
    """The side network's training FLOPs (forward + backward) and feature bytes per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from losa_cache.side import create_side
    from losa_cache.train import TrainConfig
    from losa_cache.train.sources import StoreSource
    from losa_cache.train.trainer import build_side_config

    cfg = TrainConfig.from_dict({**base_config(args, store_path), "batch_size": 1})
    source = StoreSource(store_path)
    store, info = source.store, source.info
    side = build_side_config(cfg, info, len(store.classes(cfg.task)))
    model = create_side(side)
    feats = {i: torch.randn(1, info.tokens, info.dim) for i in side.required_layers}
    counter = FlopCounterMode(display=False)
    with counter:
        model(feats).sum().backward()
    return {
        "train_flops_per_image": float(counter.get_total_flops()),
        "feature_bytes_per_image": float(info.row_bytes * len(side.required_layers)),
    }


def roofline(
    runs: list[dict[str, Any]], peaks: dict[str, float], work: dict[str, float]
) -> list[dict[str, Any]]:
    """Per run: achieved GFLOP/s and feature GB/s, as fractions of this run's peaks."""
    rows = []
    for r in runs:
        gflop_s = work["train_flops_per_image"] * r["img_s"] / 1e9
        gb_s = work["feature_bytes_per_image"] * r["img_s"] / 1e9
        peak = peaks[f"{r.get('amp', 'fp32')}_gflop_s"]
        rows.append(
            {
                "mode": r["mode"],
                "amp": r.get("amp"),
                "batch_size": r["batch_size"],
                "img_s": r["img_s"],
                "gflop_s": gflop_s,
                "pct_matmul_peak": 100 * gflop_s / peak,
                "feature_gb_s": gb_s,
                "pct_copy_bw": 100 * gb_s / peaks["copy_gb_s"],
            }
        )
    return rows


# ---------------------------------------------------------------------- report


def ratios(runs: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """Per precision: each mode's img/s and peak memory against live's (x, % of live),
    and stream's img/s against plain's (the reader's cost), at batch 1 and the batch."""
    by = {(r.get("amp"), r["mode"], r["batch_size"]): r for r in runs}
    out = []
    amps = sorted({r.get("amp") for r in runs}, key=str)
    pairs = [(m, "live") for m in MODES if m != "live"] + [("stream", "plain")]
    for amp in amps:
        for mode, ref in pairs:
            row: dict[str, Any] = {"mode": f"{mode}/{ref}", "amp": amp}
            for bs in sorted({1, batch}):
                c, lv = by.get((amp, mode, bs)), by.get((amp, ref, bs))
                if c is None or lv is None:
                    continue
                row[f"img_s_x_bs{bs}"] = c["img_s"] / lv["img_s"]
                row[f"mem_pct_bs{bs}"] = 100 * c["peak_bytes"] / lv["peak_bytes"]
                if "peak_cuda_bytes" not in c and ref == "live":  # with live's decoders
                    total = lv["peak_bytes"] + lv["children_peak_bytes"]
                    row[f"mem_pct_bs{bs}_with_decoders"] = (
                        100 * (c["peak_bytes"] + c["children_peak_bytes"]) / total
                    )
            if len(row) > 2:
                out.append(row)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2])
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", default=None, help="existing store (default: extract one)")
    p.add_argument(
        "--model",
        default=None,
        help="default: demo if its weights ship, else vit_test --random-init",
    )
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--dataset", default="demo")
    p.add_argument("--images", type=int, default=None, help="at most N images per split")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--extract-workers", type=int, default=-1)
    p.add_argument("--method", default="losa")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--layers", default="all")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (and batch 1)")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing starts")
    p.add_argument("--batches", type=int, default=50, help="timed steps (the paper: >= 50)")
    p.add_argument("--workers", type=int, default=4, help="reader I/O threads / live decoders")
    p.add_argument("--modes", default="stream,ram,gpu,live", help="subset of " + ",".join(MODES))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--amps", default=",".join(AMPS), help="precisions, each a row per mode")
    p.add_argument("--peak-size", type=int, default=2048, help="matmul size of the peaks")
    p.add_argument(
        "--drop-caches",
        action="store_true",
        help="also try the global /proc/sys/vm/drop_caches (root) when evicting",
    )
    p.add_argument(
        "--io-min-mb",
        type=float,
        default=2000,
        help="time the reader on a tiled copy of the store when it needs fewer MB (0: never)",
    )
    p.add_argument(
        "--io-seconds",
        type=float,
        default=3.0,
        help="warm page cache: repeat raw and reader passes for at least this long",
    )
    args = p.parse_args(argv)
    if args.warmup < 1 or args.batches < 1:
        p.error("--warmup and --batches must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.model is None and args.store is None:
        from importlib import resources

        from losa_cache.backbone.demo import DEMO_WEIGHTS

        shipped = resources.files("losa_cache.assets").joinpath(DEMO_WEIGHTS).is_file()
        args.model = "demo" if shipped else "vit_test"
        args.random_init = args.random_init or args.model == "vit_test"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    if device.type != "cuda" and "gpu" in modes:
        modes.remove("gpu")
    amps = [a for a in args.amps.split(",") if a]
    if sorted(set(amps) - set(AMPS)):
        p.error(f"unknown --amps {sorted(set(amps) - set(AMPS))}; choose from {list(AMPS)}")
    print(f"device: {device_info()}")

    with tempfile.TemporaryDirectory(prefix="losa-bench-train-") as tmp:
        folder = Path(tmp)
        store = args.store or build_store(args, folder)
        io = io_section(io_store(store, args, folder), args, device)
        files = training_reads(store, args)[-1]
        live = live_settings(store)
        runs = []
        for amp in amps:
            for mode in modes:
                for bs in sorted({1, args.batch_size}):
                    config = {**base_config(args, store), "batch_size": bs, "amp": amp}
                    config.update(live if mode == "live" else {"cache": CACHE_OF.get(mode, "none")})
                    resident = resident_fraction(files) if files else None
                    spec = {"mode": mode, "threads": args.threads, "config": config}
                    r = run_worker(spec, folder, f"{mode}-{amp}-bs{bs}")
                    runs.append({**r, "store_resident_before": resident})
                    print(
                        f"  {mode:6s} {r['amp']} bs {r['batch_size']:4d}: {r['img_s']:,.1f} "
                        f"img/s, peak {r['peak_bytes'] / MiB:,.1f} MiB",
                        flush=True,
                    )
        peaks = machine_peaks(args.peak_size, device)
        work = training_flops(store, args)
    return report(
        args, device, modes, runs, io, {**peaks, **work, "rows": roofline(runs, peaks, work)}
    )


def report(
    args: argparse.Namespace,
    device: torch.device,
    modes: list[str],
    runs: list[dict[str, Any]],
    io: dict[str, Any],
    roof: dict[str, Any],
) -> dict[str, Any]:
    """Print the tables and target lines, save the JSON; returns the payload."""
    kind = (
        "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) - RSS at start"
    )
    for r in runs:
        r["peak_mib"] = r["peak_bytes"] / MiB
        r["decoders_mib"] = r["children_peak_bytes"] / MiB
        r["setup_s"] = r["setup_and_end_seconds"]
    print(
        f"\ntraining ({args.method} r={args.rank}, layers {args.layers}; img/s over "
        f"{args.batches} steps after {args.warmup}; peak memory: {kind}; decoders: live "
        "mode's decoding processes, summed PSS)"
    )
    print_table(
        runs,
        ["mode", "amp", "batch_size", "img_s", "peak_mib", "decoders_mib", "setup_s", "cache"],
    )
    rat = ratios(runs, args.batch_size)
    if rat:
        print("\nper precision: mode / live and stream / plain (img/s: x; memory: % of ref)")
        print_table(rat, list(dict.fromkeys(k for r in rat for k in r)))
    print(
        f"\nroofline: {roof['train_flops_per_image'] / 1e9:.3f} GFLOP (train) and "
        f"{roof['feature_bytes_per_image'] / MiB:.2f} MiB of features per image; peaks in "
        f"this run: bf16 {roof['bf16_gflop_s']:,.0f} GFLOP/s, fp32 {roof['fp32_gflop_s']:,.0f}"
        f" GFLOP/s ({args.peak_size}^3 matmul), copy {roof['copy_gb_s']:,.1f} GB/s"
    )
    print_table(roof["rows"], list(roof["rows"][0]) if roof["rows"] else [])
    if "skipped" in io:
        print(f"\nreader efficiency: {io['skipped']}")
    else:
        _io_report(io, runs)
    payload = {
        "args": vars(args),
        "modes": modes,
        "memory_kind": kind,
        "runs": runs,
        "ratios": rat,
        "roofline": roof,
        "io": io,
    }
    payload["targets"] = target_checks(rat, io, args.batch_size, device)
    _print_targets(payload["targets"], device)
    print(f"results: {save('train', payload)}")
    return payload


def _io_report(io: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    ev = io["eviction"]
    print(
        f"\nstore files the reader needs: {io['files']} files, "
        f"{io['file_bytes'] / 1e6:,.1f} MB; page-cache eviction: fadvise "
        f"{'yes' if ev['fadvise'] else 'no'}, drop_caches {ev['drop_caches']}, "
        f"resident after {_pct(ev['resident_after'])}"
    )
    rows = []
    for cond in ("cold", "warm"):
        if cond in io:
            c = io[cond]
            rows.append(
                {
                    "pages": cond,
                    "resident": _pct(c["reader"]["resident_before"]),
                    "raw_mb_s": c["raw_mb_s"],
                    "raw_ram_mb_s": c["raw_ram_mb_s"],
                    "reader_mb_s": c["reader_file_mb_s"],
                    "reader_logical_mb_s": c["reader"]["logical_mb_s"],
                    "efficiency": _pct(c["efficiency"]),
                    "vs_ram": _pct(c["efficiency_vs_ram"]),
                }
            )
    top = max(r["batch_size"] for r in runs) if runs else 0
    stream = next((r for r in runs if r["mode"] == "stream" and r["batch_size"] == top), None)
    if stream is not None and stream["train_seconds"] > 0:
        # the training runs come after the I/O passes: compare with the matching raw rate
        res = stream["store_resident_before"]
        cond = "cold" if "cold" in io and res is not None and res < 0.5 else "warm"
        logical = stream["reader_bytes"] / stream["train_seconds"] / 1e6
        mb_s = logical * io["file_per_logical"]
        io["with_model"] = {
            "batch_size": stream["batch_size"],
            "reader_mb_s": mb_s,
            "efficiency": mb_s / io[cond]["raw_mb_s"],
            "vs": cond,
            "resident_before": res,
        }
        rows.append(
            {
                "pages": f"with model, bs {top} ({cond})",
                "resident": _pct(res),
                "raw_mb_s": io[cond]["raw_mb_s"],
                "raw_ram_mb_s": io[cond]["raw_ram_mb_s"],
                "reader_mb_s": mb_s,
                "reader_logical_mb_s": logical,
                "efficiency": _pct(io["with_model"]["efficiency"]),
                "vs_ram": _pct(mb_s / io[cond]["raw_ram_mb_s"]),
            }
        )
    print(
        f"reader (training batches, no model) vs raw read(2) of the same files "
        f"({io['store_rows']:,} rows): efficiency = reader / the fastest raw read (a reused "
        "buffer); vs_ram = reader / raw read into a buffer per file"
    )
    cols = ["pages", "resident", "raw_mb_s", "raw_ram_mb_s", "reader_mb_s"]
    print_table(rows, [*cols, "reader_logical_mb_s", "efficiency", "vs_ram"])
    if "reader_unverified" in io.get("warm", {}):
        w = io["warm"]
        print_table(
            [
                {
                    "reads": "verified (crc32c per chunk)"
                    if w["reader"]["verified"]
                    else "unverified store",
                    "reader_logical_mb_s": w["reader"]["logical_mb_s"],
                },
                {
                    "reads": "unverified (rows only)",
                    "reader_logical_mb_s": w["reader_unverified"]["logical_mb_s"],
                },
            ],
            ["reads", "reader_logical_mb_s"],
        )
        print(f"checking every read costs {w['verify_cost']:.0%} of the warm reader rate")


#: (mode/ref, what, target, higher is better) per device kind (issue 13; GPU: the older ones)
TARGETS = {
    "cpu": [
        ("stream/live", "img_s_x_bs{b}", 25.0, True),
        ("stream/live", "mem_pct_bs1", 25.0, False),
        ("stream/live", "mem_pct_bs{b}", 100.0, False),
        ("stream/plain", "img_s_x_bs{b}", 0.9, True),
    ],
    "cuda": [
        *[(f"{m}/live", "img_s_x_bs{b}", 10.0, True) for m in ("stream", "ram", "gpu")],
        *[(f"{m}/live", "mem_pct_bs1", 25.0, False) for m in ("stream", "ram", "gpu")],
        ("stream/plain", "img_s_x_bs{b}", 0.9, True),
    ],
}
READER_TARGET = 0.7  # reader efficiency (file bytes/s over the fastest raw read)


def target_checks(
    rat: list[dict[str, Any]], io: dict[str, Any], batch: int, device: torch.device
) -> list[dict[str, Any]]:
    """One row per target this run measured: the value, the target, pass or fail. Memory
    is the training process's own (live mode's decoding processes not counted)."""
    by = {(r["mode"], r["amp"]): r for r in rat}
    rows, seen = [], set()
    for mode, key, goal, higher in TARGETS["cuda" if device.type == "cuda" else "cpu"]:
        key = key.format(b=batch)
        for amp in sorted({a for _, a in by}, key=str):
            value = by.get((mode, amp), {}).get(key)
            if value is None or (mode, amp, key) in seen:  # batch 1: one memory target
                continue
            seen.add((mode, amp, key))
            ok = value >= goal if higher else value <= goal
            unit = "x" if key.startswith("img_s") else "%"
            rows.append({"ratio": mode, "amp": amp, "measure": key, "value": value,
                         "target": f"{'>=' if higher else '<='} {goal:g}{unit}",
                         "pass": "PASS" if ok else "FAIL"})  # fmt: skip
    for cond in ("cold", "warm"):
        if cond in io:
            eff = io[cond]["efficiency"]
            rows.append({"ratio": f"reader/raw ({cond})", "amp": "", "measure": "efficiency",
                         "value": eff, "target": f">= {READER_TARGET:.0%}",
                         "pass": "PASS" if eff >= READER_TARGET else "FAIL"})  # fmt: skip
    return rows


def _print_targets(checks: list[dict[str, Any]], device: torch.device) -> None:
    where = "GPU" if device.type == "cuda" else "CPU (issue 13; set for ViT-B, LoSA r16)"
    print(f"\ntargets, {where}:")
    print_table(checks, ["ratio", "amp", "measure", "value", "target", "pass"])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
