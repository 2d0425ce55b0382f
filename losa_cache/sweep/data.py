"""Where a sweep's batches come from: one read of the store feeds every run.

Two ways to read, picked like the trainer's ``--cache``:

* **memory-resident** (``ram``/``gpu``): the union of every task's train and val rows,
  union of needed blocks, is read once into a :class:`FeatureCache`. Each distinct batch
  order (task rows, seed, shuffle buffer: the trainer's :class:`RowOrder`) is a
  :class:`CacheSource` gathering from it, so every run sees exactly the batches it would
  see trained alone.
* **streaming** (``none``): one :class:`StreamSource` reads the store in one order over
  the union of the train rows, every row once per epoch. Runs whose own order is that
  order see their batches exactly; the others (a task labelling only some rows, another
  seed or buffer) see this order filtered to their rows: every labelled row once per
  epoch, deterministic and resumable, but not the shuffle ``train()`` alone would draw
  (results say ``order: shared``), and it depends on which runs share the pass (the
  memory groups). For exact runs on such tasks, use the memory-resident mode.

Either way a run learns only from rows its task labels (-1 rows are skipped) and is
scored only on labelled val/test rows; its epochs and steps are counted on its own
task's rows, as alone.

A source yields :class:`Piece` s, numbered by stream position; a :class:`Consumer` cuts
the rows it wants into batches of its size. Its resume state is one position (the row
after its last batch), so a resumed source restarts at the smallest one and every
consumer skips what it already used: batches continue exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from losa_cache.store import FeatureStore
from losa_cache.train.order import RowOrder, cut_batches
from losa_cache.train.reader import StoreReader, labelled_rows

__all__ = ["CacheSource", "Consumer", "FeatureCache", "Piece", "StreamSource", "TaskData",
           "eval_batches", "row_order"]

Feats = dict[int, torch.Tensor]  # block -> (n, T, D), storage dtype


class Piece(NamedTuple):
    """Rows of a stream from position ``pos`` on, with their features."""

    pos: int
    rows: np.ndarray  # (n,) store rows in stream order
    feats: Feats


@dataclass
class TaskData:
    """One labelling: labels of every store row (-1: none) and its split rows."""

    task: str
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    splits: dict[str, str | None]  # role -> split name
    rows: dict[str, np.ndarray]  # role -> sorted labelled rows

    @classmethod
    def load(cls, store: FeatureStore, task: str, splits: dict[str, str | None]) -> TaskData:
        rows = {role: labelled_rows(store, name, task)[0] if name else np.zeros(0, np.int64)
                for role, name in splits.items()}
        return cls(task, store.labels(task).astype(np.int64), store.classes(task), splits, rows)

    def wanted(self, role: str, num_rows: int) -> np.ndarray:
        """(N,) bool: rows of ``role`` this task learns from / is scored on."""
        mask = np.zeros(num_rows, dtype=bool)
        mask[self.rows[role]] = True
        return mask


def row_order(store: FeatureStore, rows: np.ndarray, layers: Sequence[int], batch: int,
              seed: int, buffer_rows: int | None) -> RowOrder:
    """The exact RowOrder ``train()`` alone would use (built by the reader itself)."""
    reader = StoreReader(store, rows, np.zeros(len(rows), np.int64), layers, batch, seed=seed,
                         cache="none", buffer_rows=buffer_rows, workers=1)
    reader.close()
    return reader.order


class FeatureCache:
    """Some rows of some blocks, read once (sequentially) and held in RAM or on the GPU."""

    def __init__(self, store: FeatureStore, rows: np.ndarray, layers: Sequence[int],
                 device: torch.device, workers: int, progress: bool = False) -> None:
        self.rows, self.layers, self.device = np.asarray(rows, np.int64), tuple(layers), device
        lay = store.layout
        step = lay.chunk_rows * 8
        bar = tqdm(total=len(self.rows), unit="img", unit_scale=True, desc="cache",
                   disable=not progress, dynamic_ncols=True)
        with bar, StoreReader(store, self.rows, np.zeros(len(self.rows), np.int64),
                              self.layers, step, cache="none", workers=workers) as reader:
            self.feats = {i: torch.empty((len(self.rows), lay.tokens, lay.dim),
                                         dtype=reader.dtype, device=device) for i in self.layers}
            pos = 0
            for feats, _, rows in reader.eval_batches(step):
                for i in self.layers:
                    self.feats[i][pos:pos + len(rows)].copy_(feats[i])
                pos += len(rows)
                bar.update(len(rows))
            self.bytes_read = reader.bytes_read

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.feats.values())

    def gather(self, rows: np.ndarray) -> Feats:
        idx = torch.from_numpy(np.searchsorted(self.rows, rows)).to(self.device)
        return {i: t.index_select(0, idx) for i, t in self.feats.items()}


class CacheSource:
    """One batch order's endless stream, gathered from a :class:`FeatureCache`."""

    bytes_read = 0

    def __init__(self, order: RowOrder, cache: FeatureCache, piece_rows: int) -> None:
        self.order, self.cache, self.piece_rows = order, cache, piece_rows

    def pieces(self, offset: int) -> Iterator[Piece]:
        windows = ((None, w, skip) for w, skip in self.order.windows_from(offset, True, True))
        pos = offset
        for segments in cut_batches(windows, self.piece_rows):
            rows = np.concatenate([w.rows[w.perm[a:b]] for _, w, a, b in segments])
            yield Piece(pos, rows, self.cache.gather(rows))
            pos += len(rows)

    def close(self) -> None:
        pass


class StreamSource:
    """The store streamed in one order (a :class:`StoreReader` over the union of rows)."""

    def __init__(self, reader: StoreReader) -> None:
        self.reader, self.order = reader, reader.order

    @property
    def bytes_read(self) -> int:
        return self.reader.bytes_read

    def pieces(self, offset: int) -> Iterator[Piece]:
        pos = offset
        for feats, _labels, rows in self.reader.batches(offset=offset):
            yield Piece(pos, rows.numpy(), feats)
            pos += len(rows)

    def close(self) -> None:
        self.reader.close()


class _Part(NamedTuple):
    positions: np.ndarray
    rows: np.ndarray
    feats: Feats


class Consumer:
    """Cuts batches of ``batch_size`` from the rows of a stream it ``wants`` (None: all)."""

    def __init__(self, batch_size: int, wants: np.ndarray | None, consumed: int = 0) -> None:
        self.batch_size, self.wants = batch_size, wants
        self.consumed = self.taken = int(consumed)  # resume state / rows already looked at
        self.pending: list[_Part] = []
        self.count = 0

    def feed(self, piece: Piece) -> Iterator[tuple[Feats, np.ndarray]]:
        """Batches (features, store rows) completed by this piece."""
        n = len(piece.rows)
        start = max(0, self.taken - piece.pos)
        if start < n:
            self.taken = piece.pos + n
            sel = np.arange(start, n)
            if self.wants is not None:
                sel = sel[self.wants[piece.rows[sel]]]
            if len(sel):
                self.pending.append(_take(piece, sel))
                self.count += len(sel)
        while self.count >= self.batch_size:
            yield self._cut()

    def _cut(self) -> tuple[Feats, np.ndarray]:
        need, parts = self.batch_size, []
        while need:
            part = self.pending[0]
            k = min(need, len(part.rows))
            parts.append(_slice(part, 0, k))
            if k == len(part.rows):
                self.pending.pop(0)
            else:
                self.pending[0] = _slice(part, k, len(part.rows))
            need -= k
        self.count -= self.batch_size
        self.consumed = int(parts[-1].positions[-1]) + 1
        if len(parts) == 1:
            return parts[0].feats, parts[0].rows
        feats = {i: torch.cat([p.feats[i] for p in parts]) for i in parts[0].feats}
        return feats, np.concatenate([p.rows for p in parts])


def _take(piece: Piece, sel: np.ndarray) -> _Part:
    if sel[-1] - sel[0] + 1 == len(sel):  # contiguous: views, no copy
        a, b = int(sel[0]), int(sel[-1]) + 1
        return _Part(piece.pos + sel, piece.rows[a:b], {i: t[a:b] for i, t in piece.feats.items()})
    idx = torch.from_numpy(sel).to(next(iter(piece.feats.values())).device)
    return _Part(piece.pos + sel, piece.rows[sel],
                 {i: t.index_select(0, idx) for i, t in piece.feats.items()})


def _slice(part: _Part, a: int, b: int) -> _Part:
    return _Part(part.positions[a:b], part.rows[a:b], {i: t[a:b] for i, t in part.feats.items()})


def eval_batches(store: FeatureStore, tasks: Sequence[TaskData], role: str,
                 layers: Sequence[int], batch: int, device: torch.device, workers: int,
                 cache: FeatureCache | None, counter: list[int]
                 ) -> Iterator[tuple[str, Feats, torch.Tensor]]:
    """(task, features, labels) over every task's ``role`` rows; read once for all tasks.

    From ``cache`` when it holds the rows, else one sequential read of the union of rows;
    ``counter[0]`` accumulates the bytes read.
    """
    parts = [t.rows[role] for t in tasks if role in t.rows]
    if not parts:  # no task has this split (e.g. test_split="none")
        return
    union = np.unique(np.concatenate(parts))
    if not len(union):
        return
    if cache is not None and np.isin(union, cache.rows).all() and \
            set(layers) <= set(cache.layers):
        for t in tasks:
            rows = t.rows[role]
            for a in range(0, len(rows), batch):
                r = rows[a:a + batch]
                yield t.task, cache.gather(r), _labels(t, r, device)
        return
    wants = {t.task: t.wanted(role, store.num_images) for t in tasks}
    with StoreReader(store, union, np.zeros(len(union), np.int64), layers, batch,
                     device=device, cache="none", workers=workers) as reader:
        for feats, _, rows_t in reader.eval_batches():
            rows = rows_t.numpy()
            for t in tasks:
                sel = np.flatnonzero(wants[t.task][rows])
                if len(sel):
                    yield t.task, _take(Piece(0, rows, feats), sel).feats, \
                        _labels(t, rows[sel], device)
        counter[0] += reader.bytes_read


def _labels(task: TaskData, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(task.labels[rows]).to(device)
