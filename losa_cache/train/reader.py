"""Streaming reader: batches of cached block outputs from a store, whole chunks at a time.

    reader = StoreReader(store, rows, labels, layers=(3, 7, 11), batch_size=512, seed=0)
    for features, labels, rows in reader.batches():      # endless, shuffled
        ...                                              # features: {block: (B, T, D)}
    for features, labels, rows in reader.eval_batches(): # one sequential pass

Row order comes from :mod:`losa_cache.train.order` (random chunk order + a shuffle
buffer of whole chunks, reshuffled every epoch). Reads run on an I/O thread pool one
window ahead (uncompressed local stores: straight from the shard files into the window,
store/direct.py) while the chunks of the windows after it are hinted to the kernel, so
the disk always has work queued; batches are gathered on a producer thread into pinned
memory and copied with ``non_blocking`` on CUDA. With ``cache`` ``gpu``/``ram`` the needed
rows of the needed layers are read once and batches are gathered from memory, in the same
order.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import NamedTuple

import numpy as np
import torch

from losa_cache.store import FeatureStore, StoreError
from losa_cache.train.cache import CacheChoice, choose_cache
from losa_cache.train.order import (
    RowOrder,
    StreamPosition,
    Window,
    buffer_chunks_for,
    cut_batches,
    default_buffer_rows,
)
from losa_cache.train.prefetch import Prefetcher

__all__ = ["Batch", "StoreReader", "labelled_rows"]

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MAX_RUN_CHUNKS = 8  # contiguous chunks fetched by one read call
HINT_WINDOWS = 2  # windows after the one being read whose chunks are hinted to the kernel
DIRECT_MIN_BYTES = 32 << 10  # direct reads of a sparse run: at least this much per syscall


class Batch(NamedTuple):
    features: dict[int, torch.Tensor]  # block -> (B, T, D), storage dtype
    labels: torch.Tensor  # (B,) int64
    rows: torch.Tensor  # (B,) int64 store rows


def labelled_rows(store: FeatureStore, split: str, task: str | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows of ``split`` that were written and carry a label, and those labels."""
    rows = store.split_rows(split, valid_only=True)
    labels = store.labels(task)[rows].astype(np.int64)
    keep = labels >= 0
    return rows[keep], labels[keep]


class _Payload(NamedTuple):
    """Features of some rows and where a window's rows sit in them (None: window order)."""

    tensors: dict[int, torch.Tensor]
    positions: np.ndarray | None


class StoreReader(StreamPosition):
    """Batches of ``layers`` for the given store ``rows`` (sorted, valid, labelled)."""

    def __init__(self, store: FeatureStore, rows: np.ndarray, labels: np.ndarray,
                 layers: Sequence[int], batch_size: int, seed: int = 0,
                 device: str | torch.device = "cpu", cache: str = "auto",
                 buffer_rows: int | None = None, workers: int = 4, prefetch: int = 4) -> None:
        missing = sorted(set(layers) - set(store.layers))
        if missing:
            raise StoreError(f"the store has no blocks {missing}; it holds blocks {store.layers} "
                             f"of {store.depth}")
        self.store, self.layers = store, tuple(sorted(layers))
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.layout = store.layout
        self.dtype = TORCH_DTYPES[store.dtype]
        self._arrays = {layer: store.features(layer) for layer in self.layers}
        row_bytes = self.layout.row_bytes * len(self.layers)
        self.order = self._row_order(seed, buffer_rows or default_buffer_rows(
            self.batch_size, len(self.rows), row_bytes))
        self.pin, self.prefetch = self.device.type == "cuda", prefetch
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="losa-cache-read")
        # page-cache hints on their own thread: a hint can block on a full device queue,
        # and must not hold up the reads of the window the producer waits for
        self._hints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="losa-cache-hint")
        self._lock = threading.Lock()
        self.bytes_read = self.chunks_read = 0
        self.offset = 0  # rows of the training stream handed out so far
        self.cache_choice: CacheChoice = choose_cache(cache, len(self.rows) * row_bytes,
                                                      self.device)
        self._cache: dict[int, torch.Tensor] | None = None
        if self.cache_choice.mode != "none":
            self._fill_cache()

    def _row_order(self, seed: int, buffer_rows: int) -> RowOrder:
        """Windows of whole chunks holding about ``buffer_rows`` of our rows."""
        num_chunks = len(np.unique(self.rows // self.layout.chunk_rows))
        chunks = buffer_chunks_for(len(self.rows), num_chunks, buffer_rows)
        return RowOrder(self.rows, self.layout.chunk_rows, chunks, seed)

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, offset: int = 0) -> Iterator[Batch]:
        """Endless training batches from stream position ``offset`` (rows) on."""
        self.offset = int(offset)
        with closing(self._iterate(self.offset, loop=True, shuffle=True,
                                   size=self.batch_size)) as stream:
            for batch in stream:
                self.offset += len(batch.rows)
                yield batch

    def eval_batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """One sequential pass over all rows (no shuffle, last batch may be short)."""
        yield from self._iterate(0, loop=False, shuffle=False, size=batch_size or self.batch_size)

    def stats(self) -> dict:
        return {"bytes_read": self.bytes_read, "chunks_read": self.chunks_read,
                "rows": len(self.rows), "cache": self.cache_choice.to_dict(),
                "buffer_chunks": self.order.buffer_chunks, "chunk_rows": self.layout.chunk_rows}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._hints.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ iteration

    def _iterate(self, offset: int, loop: bool, shuffle: bool, size: int) -> Iterator[Batch]:
        if self._cache is not None and self.cache_choice.mode == "gpu":
            yield from self._host_batches(offset, loop, shuffle, size)  # gathered on the GPU
            return
        prefetcher = Prefetcher(lambda: self._host_batches(offset, loop, shuffle, size),
                                self.prefetch)
        try:
            for batch in prefetcher:
                yield self._to_device(batch)
        finally:
            prefetcher.close()  # also when the consumer stops early

    def _host_batches(self, offset: int, loop: bool, shuffle: bool, size: int) -> Iterator[Batch]:
        windows = self.order.windows_from(offset, loop, shuffle)
        pieces = self._cached(windows) if self._cache is not None else self._streamed(windows)
        for segments in cut_batches(pieces, size):
            yield self._assemble(segments)

    def _cached(self, windows: Iterator[tuple[Window, int]]):
        assert self._cache is not None
        for window, skip in windows:
            yield _Payload(self._cache, np.searchsorted(self.rows, window.rows)), window, skip

    def _streamed(self, windows: Iterator[tuple[Window, int]]):
        """Windows with their features, the next window always being read meanwhile and
        the ``HINT_WINDOWS`` after it hinted to the page cache (no memory held here)."""
        ahead: deque = deque()

        def advance():  # submit the next window's reads, top up and hint the lookahead
            while len(ahead) < 1 + HINT_WINDOWS and (item := next(windows, None)) is not None:
                ahead.append(item)
                self._hints.submit(self._hint, item[0])
            if not ahead:
                return None
            item = ahead.popleft()
            return item, self._submit(item[0])

        pending = advance()
        while pending is not None:
            (window, skip), (tensors, jobs) = pending
            for job in jobs:
                job.result()
            pending = advance()
            yield _Payload(tensors, None), window, skip

    def _hint(self, window: Window) -> None:
        """Page-cache read-ahead of a window's runs (best effort: errors surface on read)."""
        with contextlib.suppress(Exception):
            for lo, hi in self._runs(window.chunks):
                for layer in self.layers:
                    self._arrays[layer].advise(lo, hi)

    def _assemble(self, segments: list) -> Batch:
        """Gather the rows of a batch (segments of windows) into fresh (pinned) tensors."""
        n = sum(b - a for _, _, a, b in segments)
        dev = self.device if self.cache_choice.mode == "gpu" else torch.device("cpu")
        shape = (n, self.layout.tokens, self.layout.dim)
        feats = {layer: torch.empty(shape, dtype=self.dtype, device=dev, pin_memory=self.pin
                                    and dev.type == "cpu") for layer in self.layers}
        labels, rows, pos = [], [], 0
        for payload, window, a, b in segments:
            perm = window.perm[a:b]
            src = perm if payload.positions is None else payload.positions[perm]
            end = pos + b - a
            if dev.type == "cpu":  # numpy: one thread; an OpenMP team started from this
                for layer in self.layers:  # thread would fight the I/O threads and the model
                    np.take(_np(payload.tensors[layer]), src, axis=0,
                            out=_np(feats[layer][pos:end]))
            else:
                idx = torch.from_numpy(src).to(dev)
                for layer in self.layers:
                    torch.index_select(payload.tensors[layer], 0, idx, out=feats[layer][pos:end])
            labels.append(self.labels[np.searchsorted(self.rows, window.rows[perm])])
            rows.append(torch.from_numpy(window.rows[perm]))
            pos += b - a
        lab, row = torch.cat(labels), torch.cat(rows)
        if dev.type == "cuda":
            return Batch(feats, lab.to(dev, non_blocking=True), row)
        return Batch(feats, lab.pin_memory() if self.pin else lab, row)

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        feats = {k: v.to(self.device, non_blocking=True) for k, v in batch.features.items()}
        return Batch(feats, batch.labels.to(self.device, non_blocking=True), batch.rows)

    # ------------------------------------------------------------------ reading

    def _submit(self, window: Window, out: dict[int, torch.Tensor] | None = None, base: int = 0
                ) -> tuple[dict[int, torch.Tensor], list[Future]]:
        """Read a window's chunks (runs of contiguous chunks, every layer) into ``out``."""
        shape = (len(window.rows), self.layout.tokens, self.layout.dim)
        if out is None:
            out = {layer: torch.empty(shape, dtype=self.dtype) for layer in self.layers}
        jobs = []
        for lo, hi in self._runs(window.chunks):
            p0, p1 = np.searchsorted(window.rows, [lo, hi])
            if p1 == p0:
                continue
            local = window.rows[p0:p1] - lo
            for layer in self.layers:
                dest = out[layer][base + p0:base + p1]
                jobs.append(self._pool.submit(self._read_run, layer, lo, hi, local, dest))
        return out, jobs

    def _runs(self, chunks: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges of runs of contiguous chunk ids (at most MAX_RUN_CHUNKS each)."""
        cr, n = self.layout.chunk_rows, self.layout.num_images
        runs, start = [], 0
        for i in range(1, len(chunks) + 1):
            if (i == len(chunks) or chunks[i] != chunks[i - 1] + 1
                    or i - start == MAX_RUN_CHUNKS):
                runs.append((int(chunks[start]) * cr, min(n, (int(chunks[i - 1]) + 1) * cr)))
                start = i
        return runs

    def _read_run(self, layer: int, lo: int, hi: int, local: np.ndarray,
                  dest: torch.Tensor) -> None:
        """Rows ``lo + local`` into ``dest``: straight into it when they are whole runs of
        contiguous rows of a raw local array (no intermediate copy), else whole chunks
        into a scratch tensor and a gather."""
        arr = self._arrays[layer]
        groups = _contiguous_groups(local)
        if len(local) == hi - lo:
            nbytes = arr.read_into(lo, hi, dest)
        elif arr.direct is not None and (len(groups) <= 4 or len(groups) * DIRECT_MIN_BYTES
                                          <= len(local) * self.layout.row_bytes):
            nbytes = sum(arr.read_into(lo + int(local[a]), lo + int(local[b - 1]) + 1,
                                       dest[a:b]) for a, b in groups)
        else:
            raw = torch.empty((hi - lo, *dest.shape[1:]), dtype=dest.dtype)
            nbytes = arr.read_into(lo, hi, raw)  # whole chunks
            np.take(_np(raw), local, axis=0, out=_np(dest))
        with self._lock:
            self.bytes_read += nbytes
            self.chunks_read += -(-(hi - lo) // self.layout.chunk_rows)

    def _fill_cache(self) -> None:
        """Read every needed row of every needed layer once, sequentially, one window ahead."""
        gpu = self.cache_choice.mode == "gpu"
        shape = (len(self.rows), self.layout.tokens, self.layout.dim)
        dev = self.device if gpu else torch.device("cpu")
        cache = {layer: torch.empty(shape, dtype=self.dtype, device=dev) for layer in self.layers}

        def submit(window: Window) -> tuple[int, dict[int, torch.Tensor], list[Future]]:
            base = int(np.searchsorted(self.rows, window.rows[0]))
            return (base, *self._submit(window, None if gpu else cache, 0 if gpu else base))

        pending: list = []
        for window in [*self.order.windows(0, shuffle=False), None]:
            if window is not None:
                pending.append(submit(window))
            if len(pending) == 2 or (window is None and pending):
                base, host, jobs = pending.pop(0)
                for job in jobs:
                    job.result()
                if gpu:
                    for layer in self.layers:
                        cache[layer][base:base + len(host[layer])].copy_(host[layer])
        self._cache = cache


def _contiguous_groups(local: np.ndarray) -> list[tuple[int, int]]:
    """``[a, b)`` position ranges of ``local`` (sorted) holding consecutive values."""
    if not len(local):
        return []
    cuts = np.flatnonzero(np.diff(local) != 1) + 1
    bounds = [0, *cuts.tolist(), len(local)]
    return list(itertools.pairwise(bounds))


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (bf16 as its int16 bits)."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
