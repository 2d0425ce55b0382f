"""Streaming reader: pieces and batches of cached block outputs and taps from a store.

    reader = StoreReader(store, rows, labels, layers=(3, 7, "embed"), batch_size=512, seed=0)
    for features, labels, rows in reader.batches():      # endless, shuffled
        ...                                              # features: {key: (B, T, D)}
    for features, labels, rows in reader.eval_batches(): # one sequential pass

Row order comes from :mod:`losa_cache.train.order` (shuffled windows of consecutive
split rows, reshuffled every epoch), never from the store's chunking. An I/O thread pool
reads each window ahead, in visiting order: uncompressed local stores go straight from
the shard files, each contiguous file range one ``preadv`` whose buffers are its rows'
shuffled slots (store/direct.py), so the shuffle costs no copy and a batch is a slice of
its window. The chunks of the windows after the one being read are hinted to the
kernel, so the disk always has work queued. On CUDA the windows are pinned and batches
are copied with ``non_blocking``. Memory caches live in :mod:`losa_cache.train.feed`.

Host memory is bounded (``max_memory``, ``--max-memory``): the windows read ahead are as
many as fit beside the one being served and a batch (:func:`reader_memory`), and a
served window is freed once its last full batch is handed over (the consumer copies out
the rest). The budget never changes the window (the shuffle buffer), so never the order.

What is read: the feed keys asked for (:mod:`losa_cache.train.keys`: blocks, ``embed``,
``sum:k``, ``attn:i``, ``mlp:i``), each the array holding it; a ``sum:k`` the store lacks
is summed in fp32 from ``embed`` and blocks 0..k-1 once its window is read. int8 stores
are read as stored, codes (zero-copy scatter reads, 1 byte a value) and fp16 scales into
their own window buffers; pieces carry them as :class:`~losa_cache.train.feed.Quantized`
and batches are dequantized after the transfer (:func:`~losa_cache.train.feed.to_device`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from losa_cache.store import FeatureStore, StoreError
from losa_cache.store.store import STORAGE_DTYPES, FeatureArray, QuantizedArray
from losa_cache.train.feed import Consumer, Feats, Piece, Quantized, keep_mask, planned, to_device
from losa_cache.train.keys import (
    Key,
    available_keys,
    key_tap,
    missing_message,
    plan_reads,
    sort_keys,
)
from losa_cache.train.order import RowOrder, default_buffer_rows

if TYPE_CHECKING:
    from losa_cache.augment import ViewDraw

__all__ = ["DEFAULT_MAX_MEMORY", "Batch", "StoreReader", "labelled_rows", "reader_memory"]

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MAX_RUN_CHUNKS = 8  # contiguous chunks per hint or zarr read job
READ_AHEAD_BYTES = 256 << 20  # windows up to this size are read 2 ahead, bigger ones 1
HINT_WINDOWS = 2  # windows after the one being read whose chunks are hinted to the kernel
#: host memory the reader holds by default (windows served and read ahead, a batch): 1 GiB,
#: or one window read ahead where that is more (streaming stays below live mode's
#: footprint: a live backbone holds its weights and a batch's activations on top)
DEFAULT_MAX_MEMORY = 1 << 30
MiB = 1 << 20


class Batch(NamedTuple):
    features: dict[Key, torch.Tensor]  # key -> (B, T, D), storage dtype (int8: float32)
    labels: torch.Tensor  # (B,) int64
    rows: torch.Tensor  # (B,) int64 store rows


def labelled_rows(
    store: FeatureStore, split: str, task: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted rows of ``split`` that were written and carry a label, and those labels."""
    rows = store.split_rows(split, valid_only=True)
    labels = store.labels(task)[rows].astype(np.int64)
    keep = labels >= 0
    return rows[keep], labels[keep]


class _Part(NamedTuple):
    """One array read into its own window buffer: a key's values, or its int8 codes or
    scales."""

    key: Key
    role: str  # values | codes | scales
    array: FeatureArray


def sum_fp32(parts: Sequence[torch.Tensor | Quantized]) -> torch.Tensor:
    """z0 + b_0 + ... in fp32, in this order (extraction's ``sum:k`` accumulation)."""
    acc = _float(parts[0]).clone()
    for p in parts[1:]:
        acc += _float(p)
    return acc


def _float(v: torch.Tensor | Quantized) -> torch.Tensor:
    return v.values() if isinstance(v, Quantized) else v.float()


class StoreReader:
    """Pieces of the keys ``layers`` (blocks and taps) for the store ``rows`` (sorted,
    valid) in the order over ``order_rows`` (the split's rows; default ``rows``): rows
    not in ``rows`` are skipped."""

    def __init__(
        self,
        store: FeatureStore,
        rows: np.ndarray,
        labels: np.ndarray,
        layers: Sequence[Key],
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        buffer_rows: int | None = None,
        workers: int = 4,
        order_rows: np.ndarray | None = None,
        max_memory: int | None = None,
        views: ViewDraw | None = None,
    ) -> None:
        """``max_memory``: bytes of host memory the windows in flight may hold (default
        :data:`DEFAULT_MAX_MEMORY`); it bounds the read-ahead, never the batch order.
        ``views``: each row's features are read from the augmented view the order draws
        for it (the store's ``index/views``; pieces keep the clean row numbers)."""
        held = available_keys(store.taps, store.layout.layers)
        reads, self.derived, missing = plan_reads(layers, held)
        blocks = sorted(k for k in missing if isinstance(k, int))
        if blocks:
            raise StoreError(
                f"the store has no blocks {blocks}; it holds blocks {store.layers} of {store.depth}"
            )
        if missing:
            raise StoreError(
                missing_message(
                    missing[0],
                    "this read",
                    store.taps,
                    store.layers,
                    (store.manifest.subset or {}).get("source"),
                )
            )
        self.store, self.layers = store, sort_keys(layers)  # the keys pieces carry
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.layout = store.layout
        self._parts = [p for k in reads for p in _parts(k, store.tap_features(*key_tap(k)))]
        domain = self.rows if order_rows is None else np.asarray(order_rows, dtype=np.int64)
        self.keep = None if order_rows is None else keep_mask(self.rows)
        fp16_row = 2 * self.layout.tokens * self.layout.dim * len(self.layers)
        self.order = RowOrder(
            domain,
            buffer_rows or default_buffer_rows(self.batch_size, len(domain), fp16_row),
            seed,
            views,
        )
        self.view_table = None if views is None else store_view_table(store, views.count)
        # a window holds every array read (int8: codes and scales) and the sums derived
        row_bytes = self.layout.row_bytes * len(
            reads
        ) + 4 * self.layout.tokens * self.layout.dim * len(self.derived)
        window_rows = self.order.buffer_rows
        #: windows read ahead of the one being served: 2 keeps the I/O threads busy at
        #: window boundaries when a window is served fast (a few batches); 1 when it is
        #: big or lasts many steps anyway (small batches); fewer where max_memory says so
        want = (
            2
            if (window_rows * row_bytes <= READ_AHEAD_BYTES and window_rows <= 8 * self.batch_size)
            else 1
        )
        self.memory = reader_memory(
            window_rows, min(self.batch_size, window_rows), row_bytes, max_memory, want
        )
        self.read_ahead = int(self.memory["read_ahead"])
        self.pin = self.device.type == "cuda"
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="losa-cache-read"
        )
        # page-cache hints on their own thread: a hint can block on a full device queue,
        # and must not hold up the reads of the window the producer waits for
        self._hints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="losa-cache-hint")
        self._lock = threading.Lock()
        self.bytes_read = self.chunks_read = 0
        #: every array read straight from its shard files (store/direct.py)
        self.direct = all(p.array.direct is not None for p in self._parts)

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return len(self.rows)

    def pieces(self, offset: int = 0, loop: bool = True, shuffle: bool = True) -> Iterator[Piece]:
        """A window at a time, from stream position ``offset`` on (host memory)."""
        return self._streamed(planned(self.order, self.keep, offset, loop, shuffle))

    def batches(self, offset: int = 0) -> Iterator[Batch]:
        """Endless training batches from stream position ``offset`` on."""
        yield from self._batches(Consumer(self.batch_size, None, offset), True, True)

    def eval_batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """One sequential pass over all rows (no shuffle, last batch may be short)."""
        yield from self._batches(Consumer(batch_size or self.batch_size, None), False, False)

    def _batches(self, consumer: Consumer, loop: bool, shuffle: bool) -> Iterator[Batch]:
        pieces = self.pieces(consumer.position, loop, shuffle)
        try:
            for piece in itertools.chain(pieces, [None]):
                done = consumer.flush() if piece is None else consumer.feed(piece)
                for feats, rows in done:
                    labels = torch.from_numpy(self.labels[np.searchsorted(self.rows, rows)])
                    yield self._to_device(Batch(feats, labels, torch.from_numpy(rows)))
        finally:
            pieces.close()

    def stats(self) -> dict:
        return {
            "bytes_read": self.bytes_read,
            "chunks_read": self.chunks_read,
            "rows": len(self.rows),
            "buffer_rows": self.order.buffer_rows,
            "memory": self.memory,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._hints.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ iteration

    def _streamed(self, plans: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[Piece]:
        """Windows read in visiting order (a batch is a slice), ``read_ahead`` windows
        being read while one is served (so the I/O threads never wait for the next
        window; at most ``read_ahead + 1`` held), and the ``HINT_WINDOWS`` after them
        hinted to the page cache (no memory held here: the kernel queues the reads)."""
        hinted: deque = deque()
        reading: deque = deque()

        def top_up(n: int) -> None:  # keep n windows being read, the next ones hinted
            while len(reading) < n:
                while len(hinted) < 1 + HINT_WINDOWS and (item := next(plans, None)):
                    read = self._physical(*item)  # the rows holding the drawn views
                    hinted.append((*item, read))
                    self._hints.submit(self._hint, read)
                if not hinted:
                    return
                pos, rows, read = hinted.popleft()
                out = [
                    torch.empty(
                        (len(rows), *p.array.shape[1:]),
                        dtype=STORAGE_DTYPES[p.array.dtype],
                        pin_memory=self.pin,
                    )
                    for p in self._parts
                ]
                reading.append((pos, rows, out, self._submit(read, np.arange(len(rows)), out)))

        try:
            top_up(max(1, self.read_ahead))
            while reading:
                pos, rows, tensors, jobs = reading.popleft()
                for job in jobs:
                    job.result()
                top_up(self.read_ahead)
                piece = Piece(pos, rows, self._assemble(tensors))
                del tensors, jobs
                yield piece
                del piece  # the consumer holds what it still needs: this window may go
                top_up(1)  # read_ahead 0: the next window only now
        finally:
            for *_, jobs in reading:  # an early stop: let the reads in flight finish
                for job in jobs:
                    with contextlib.suppress(Exception):
                        job.result()

    def _physical(self, positions: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The store rows read for ``rows``: themselves, or the views the order draws."""
        views = self.order.view_of(positions, rows)
        return rows if views is None else self.view_table[rows, views]

    def _assemble(self, buffers: list[torch.Tensor]) -> Feats:
        """A read window's buffers as the piece's features: int8 codes and scales paired,
        the derived sums added (fp32), the arrays read only for them dropped."""
        feats: Feats = {}
        for part, buf in zip(self._parts, buffers, strict=True):
            if part.role == "scales":
                feats[part.key] = Quantized(feats[part.key], buf)  # type: ignore[arg-type]
            else:
                feats[part.key] = buf
        for key, parts in self.derived.items():
            feats[key] = sum_fp32([feats[p] for p in parts])
        return {k: feats[k] for k in self.layers}

    def _hint(self, rows: np.ndarray) -> None:
        """Page-cache read-ahead of a window's runs (best effort: errors surface on read)."""
        with contextlib.suppress(Exception):
            for lo, hi in self._runs(np.unique(rows // self.layout.chunk_rows)):
                for part in self._parts:
                    part.array.advise(lo, hi)

    def _to_device(self, batch: Batch) -> Batch:
        feats = to_device(batch.features, self.device)
        if self.device.type == "cpu":
            return Batch(feats, batch.labels, batch.rows)
        return Batch(feats, batch.labels.to(self.device, non_blocking=True), batch.rows)

    # ------------------------------------------------------------------ reading

    def _submit(self, rows: np.ndarray, slots: np.ndarray, out: list[torch.Tensor]) -> list[Future]:
        """Read ``rows`` into rows ``slots`` of ``out`` (a buffer per array read): the
        shuffle happens in the read itself. One job per array, cut at chunk boundaries
        into enough jobs for every I/O thread (few, large jobs: little Python per byte)."""
        if not len(rows):
            return []
        order = np.argsort(rows, kind="stable")
        rows, slots = rows[order], slots[order]
        cr = self.layout.chunk_rows
        if self.direct:
            parts = max(1, -(-self.workers // len(self._parts)))
            cuts = np.linspace(0, len(rows), parts + 1).astype(np.int64)[1:-1]
            cuts = np.searchsorted(rows, rows[cuts] // cr * cr)  # at whole chunks
        else:  # zarr (remote, compressed): a job per run of chunks, fetched concurrently
            cuts = np.searchsorted(rows, [lo for lo, _ in self._runs(np.unique(rows // cr))])
        bounds = np.unique(np.concatenate([[0], cuts, [len(rows)]])).tolist()
        return [
            self._pool.submit(self._read_rows, part.array, rows[a:b], slots[a:b], buf)
            for part, buf in zip(self._parts, out, strict=True)
            for a, b in itertools.pairwise(bounds)
            if b > a
        ]

    def _runs(self, chunks: np.ndarray) -> list[tuple[int, int]]:
        """Row ranges of runs of contiguous chunk ids (at most MAX_RUN_CHUNKS each)."""
        cr, n = self.layout.chunk_rows, self.layout.num_images
        runs, start = [], 0
        for i in range(1, len(chunks) + 1):
            if i == len(chunks) or chunks[i] != chunks[i - 1] + 1 or i - start == MAX_RUN_CHUNKS:
                runs.append((int(chunks[start]) * cr, min(n, (int(chunks[i - 1]) + 1) * cr)))
                start = i
        return runs

    def _read_rows(
        self, array: FeatureArray, rows: np.ndarray, slots: np.ndarray, out: torch.Tensor
    ) -> None:
        """Rows ``rows`` (sorted) into rows ``slots`` of ``out`` (store/direct.py: straight
        from the files, else whole chunks via zarr)."""
        nbytes = array.scatter_rows(rows, out, slots)
        with self._lock:
            self.bytes_read += nbytes
            self.chunks_read += len(np.unique(rows // self.layout.chunk_rows))


def store_view_table(store: FeatureStore, count: int) -> np.ndarray:
    """The store's ``index/views`` for a run drawing among ``count`` views."""
    from losa_cache.store.views import read_view_table

    table = read_view_table(store)
    if table is None or table.shape[1] - 1 != count:
        held = 0 if table is None else table.shape[1] - 1
        raise StoreError(
            f"the run draws among {count} augmented views but the store holds "
            f"{held}; train with --views clean, or extract with --views {count}"
        )
    return table


def _parts(key: Key, array: FeatureArray | QuantizedArray) -> list[_Part]:
    if isinstance(array, QuantizedArray):
        return [_Part(key, "codes", array.codes), _Part(key, "scales", array.scales)]
    return [_Part(key, "values", array)]


def reader_memory(
    window_rows: int, batch_rows: int, row_bytes: int, max_memory: int | None, want: int
) -> dict[str, int]:
    """The read-ahead that ``max_memory`` bytes hold: (read_ahead + 1) windows and one
    batch (a batch spanning two windows is a copy). The default budget always holds one
    window read ahead; a given budget that holds not even one window is refused, naming
    the memory needed (the window is the shuffle buffer: shrinking it would change the
    batch order, so only the user may)."""
    window, batch = window_rows * row_bytes, batch_rows * row_bytes
    budget = max(DEFAULT_MAX_MEMORY, 2 * window + batch) if max_memory is None else max_memory
    fits = (budget - batch) // window - 1
    if fits < 0:
        need = -(-(window + batch) // MiB)
        raise ValueError(
            f"--max-memory {budget / MiB:,.0f} MiB cannot hold one shuffle window of "
            f"{window_rows} rows ({window / MiB:,.1f} MiB) and a batch: give --max-memory "
            f">= {need} (MiB), or a smaller --shuffle-buffer or --batch-size"
        )
    ahead = int(min(want, fits))
    return {
        "max_memory": int(budget),
        "window_bytes": int(window),
        "batch_bytes": int(batch),
        "read_ahead": ahead,
        "windows_held": ahead + 1,
        "bytes_held": int((ahead + 1) * window + batch),
    }
