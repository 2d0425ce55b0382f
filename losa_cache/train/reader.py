"""Streaming reader: batches of cached block outputs from a store, whole chunks at a time.

    reader = StoreReader(store, rows, labels, layers=(3, 7, 11), batch_size=512, seed=0)
    for features, labels, rows in reader.batches():      # endless, shuffled
        ...                                              # features: {block: (B, T, D)}
    for features, labels, rows in reader.eval_batches(): # one sequential pass

Row order comes from :mod:`losa_cache.train.order` (random chunk order + a shuffle
buffer of whole chunks, reshuffled every epoch). An I/O thread pool reads each window
one window ahead, in visiting order: uncompressed local stores go straight from the
shard files, each contiguous file range one ``preadv`` whose buffers are its rows'
shuffled slots (store/direct.py), so the shuffle costs no copy and a batch is a slice of
its window; only a batch that straddles two windows is copied. The chunks of the
windows after the one being read are hinted to the kernel, so the disk always has work
queued. On CUDA the windows are pinned and batches are copied with ``non_blocking``.
With ``cache`` ``gpu``/``ram`` the needed rows of the needed layers are read once and
batches are gathered from memory, in the same order.
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
from losa_cache.store.store import numpy_view
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
MAX_RUN_CHUNKS = 8  # contiguous chunks per hint or zarr read job
READ_AHEAD_BYTES = 256 << 20  # windows up to this size are read 2 ahead, bigger ones 1
HINT_WINDOWS = 2  # windows after the one being read whose chunks are hinted to the kernel


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
    """A window's features: tensors, where its rows sit in them (None: in visiting order,
    so a batch is a slice), and its rows and labels in visiting order."""

    tensors: dict[int, torch.Tensor]
    positions: np.ndarray | None
    rows: torch.Tensor
    labels: torch.Tensor


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
        window_rows = self.order.buffer_chunks * self.layout.chunk_rows
        #: windows read ahead of the one being served: 2 keeps the I/O threads busy at
        #: window boundaries when a window is served fast (a few batches); 1 when it is
        #: big (each is host memory) or lasts many steps anyway (small batches)
        self.read_ahead = 2 if (window_rows * row_bytes <= READ_AHEAD_BYTES
                                and window_rows <= 8 * self.batch_size) else 1
        self.pin, self.prefetch = self.device.type == "cuda", prefetch
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
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
        #: every layer read straight from its shard files (store/direct.py)
        self.direct = all(a.direct is not None for a in self._arrays.values())
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
            positions = np.searchsorted(self.rows, window.rows)
            yield self._payload(self._cache, positions, window), window, skip

    def _payload(self, tensors: dict[int, torch.Tensor], positions: np.ndarray | None,
                 window: Window) -> _Payload:
        rows = window.ordered
        labels = self.labels[np.searchsorted(self.rows, rows)]
        return _Payload(tensors, positions, torch.from_numpy(rows),
                        labels.pin_memory() if self.pin else labels)

    def _streamed(self, windows: Iterator[tuple[Window, int]]):
        """Windows read in visiting order (a batch is a slice), ``read_ahead`` windows
        always being read meanwhile (so the I/O threads never wait for the next window)
        and the ``HINT_WINDOWS`` after them hinted to the page cache (no memory held
        here: the kernel queues the reads)."""
        hinted: deque = deque()
        reading: deque = deque()

        def top_up() -> None:  # keep read_ahead + 1 windows submitted, the next ones hinted
            while len(reading) <= self.read_ahead:
                while len(hinted) < 1 + HINT_WINDOWS and (item := next(windows, None)):
                    hinted.append(item)
                    self._hints.submit(self._hint, item[0])
                if not hinted:
                    return
                window, skip = hinted.popleft()
                rows = window.ordered
                shape = (len(rows), self.layout.tokens, self.layout.dim)
                out = {layer: torch.empty(shape, dtype=self.dtype, pin_memory=self.pin)
                       for layer in self.layers}
                reading.append(((window, skip), out, self._submit(rows, np.arange(len(rows)),
                                                                  out)))

        top_up()
        while reading:
            (window, skip), tensors, jobs = reading.popleft()
            for job in jobs:
                job.result()
            top_up()
            yield self._payload(tensors, None, window), window, skip

    def _hint(self, window: Window) -> None:
        """Page-cache read-ahead of a window's runs (best effort: errors surface on read)."""
        with contextlib.suppress(Exception):
            for lo, hi in self._runs(window.chunks):
                for layer in self.layers:
                    self._arrays[layer].advise(lo, hi)

    def _assemble(self, segments: list) -> Batch:
        """A batch from segments of windows: a slice of a window read in visiting order
        (no copy), else its rows gathered into fresh (pinned) tensors."""
        dev = self.device if self.cache_choice.mode == "gpu" else torch.device("cpu")
        payload, window, a, b = segments[0]
        if len(segments) == 1 and payload.positions is None:
            feats = {layer: payload.tensors[layer][a:b] for layer in self.layers}
        else:
            shape = (sum(b - a for *_, a, b in segments), self.layout.tokens, self.layout.dim)
            feats = {layer: torch.empty(shape, dtype=self.dtype, device=dev, pin_memory=self.pin
                                        and dev.type == "cpu") for layer in self.layers}
            pos = 0
            for payload, window, a, b in segments:
                end = pos + b - a
                src = None if payload.positions is None else payload.positions[window.perm[a:b]]
                for layer in self.layers:
                    _gather(payload.tensors[layer], a, b, src, feats[layer][pos:end])
                pos = end
        if len(segments) == 1:
            payload, _, a, b = segments[0]
            labels, rows = payload.labels[a:b], payload.rows[a:b]
        else:
            labels = torch.cat([p.labels[a:b] for p, _, a, b in segments])
            rows = torch.cat([p.rows[a:b] for p, _, a, b in segments])
            labels = labels.pin_memory() if self.pin and dev.type == "cpu" else labels
        if dev.type == "cuda":
            return Batch(feats, labels.to(dev, non_blocking=True), rows)
        return Batch(feats, labels, rows)

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        feats = {k: v.to(self.device, non_blocking=True) for k, v in batch.features.items()}
        return Batch(feats, batch.labels.to(self.device, non_blocking=True), batch.rows)

    # ------------------------------------------------------------------ reading

    def _submit(self, rows: np.ndarray, slots: np.ndarray, out: dict[int, torch.Tensor]
                ) -> list[Future]:
        """Read ``rows`` into rows ``slots`` of ``out`` (every layer): the shuffle happens
        in the read itself. One job per layer, cut at chunk boundaries into enough jobs
        for every I/O thread (few, large jobs: little Python per byte)."""
        if not len(rows):
            return []
        order = np.argsort(rows, kind="stable")
        rows, slots = rows[order], slots[order]
        cr = self.layout.chunk_rows
        if self.direct:
            parts = max(1, -(-self.workers // len(self.layers)))
            cuts = np.linspace(0, len(rows), parts + 1).astype(np.int64)[1:-1]
            cuts = np.searchsorted(rows, rows[cuts] // cr * cr)  # at whole chunks
        else:  # zarr (remote, compressed): a job per run of chunks, fetched concurrently
            cuts = np.searchsorted(rows, [lo for lo, _ in self._runs(np.unique(rows // cr))])
        bounds = np.unique(np.concatenate([[0], cuts, [len(rows)]])).tolist()
        return [self._pool.submit(self._read_rows, layer, rows[a:b], slots[a:b], out[layer])
                for layer in self.layers for a, b in itertools.pairwise(bounds) if b > a]

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

    def _read_rows(self, layer: int, rows: np.ndarray, slots: np.ndarray,
                   out: torch.Tensor) -> None:
        """Rows ``rows`` (sorted) into rows ``slots`` of ``out`` (store/direct.py: straight
        from the files, else whole chunks via zarr)."""
        nbytes = self._arrays[layer].scatter_rows(rows, out, slots)
        with self._lock:
            self.bytes_read += nbytes
            self.chunks_read += len(np.unique(rows // self.layout.chunk_rows))

    def _fill_cache(self) -> None:
        """Read every needed row of every needed layer once, sequentially, one window ahead."""
        gpu = self.cache_choice.mode == "gpu"
        shape = (len(self.rows), self.layout.tokens, self.layout.dim)
        dev = self.device if gpu else torch.device("cpu")
        cache = {layer: torch.empty(shape, dtype=self.dtype, device=dev) for layer in self.layers}

        def submit(window: Window) -> tuple[int, dict[int, torch.Tensor], list[Future]]:
            base = int(np.searchsorted(self.rows, window.rows[0]))
            n = len(window.rows)
            out = cache if not gpu else {layer: torch.empty(
                (n, *shape[1:]), dtype=self.dtype, pin_memory=self.pin) for layer in self.layers}
            slots = np.arange(n) + (0 if gpu else base)
            return base, out, self._submit(window.rows, slots, out)

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


def _gather(source: torch.Tensor, a: int, b: int, index: np.ndarray | None,
            out: torch.Tensor) -> None:
    """``out[:] = source[a:b]`` (index None) or ``source[index]``. On CPU through numpy:
    one thread, GIL released, where a torch op on this thread would start an OpenMP
    team of its own and fight the I/O threads and the model for the cores."""
    if out.device.type == "cuda":
        if index is None:
            out.copy_(source[a:b])
        else:
            torch.index_select(source, 0, torch.from_numpy(index).to(out.device), out=out)
    elif index is None:
        np.copyto(numpy_view(out), numpy_view(source[a:b]))
    else:
        np.take(numpy_view(source), index, axis=0, out=numpy_view(out))

