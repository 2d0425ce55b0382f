"""Feeds: where batches come from, cut into pieces that many runs consume.

A feed walks a :class:`~losa_cache.train.order.RowOrder` over the split's rows and
yields :class:`Piece` s: the rows some run wants (its task labels them), in visiting
order, each with its stream position and features. Three feeds, one interface
(``pieces(offset, loop, shuffle)``, ``bytes_read``, ``close``):

* :class:`~losa_cache.train.reader.StoreReader`: streamed from the store, a window at a
  time, read ahead on an I/O pool;
* :class:`CacheFeed`: gathered from a :class:`FeatureCache` (``--cache ram|gpu``: the
  needed rows of the needed blocks read once);
* :class:`~losa_cache.train.live.LiveFeed`: the frozen backbone run on the images.

A :class:`Consumer` cuts the rows one run wants into batches of its size. Its resume
state is one stream position (after its last batch's last row), so a feed restarted at
the smallest position of its runs continues every run exactly; rows a run's task does
not label are skipped, for a run alone exactly as inside a sweep.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from losa_cache.store.store import numpy_view
from losa_cache.train.order import RowOrder

__all__ = ["CacheFeed", "Consumer", "FeatureCache", "Feed", "Piece", "keep_mask", "planned",
           "rechunk"]

Feats = dict[int, torch.Tensor]  # block -> (n, T, D), storage dtype


class Piece(NamedTuple):
    """Rows of a stream, with their stream positions and features."""

    positions: np.ndarray  # (n,) int64, increasing
    rows: np.ndarray  # (n,) store rows in visiting order
    feats: Feats


class Feed(Protocol):
    bytes_read: int

    def pieces(self, offset: int, loop: bool, shuffle: bool) -> Iterator[Piece]: ...

    def close(self) -> None: ...


def keep_mask(rows: np.ndarray) -> np.ndarray:
    """(max row + 1,) bool: True at ``rows`` (fast membership for whole windows)."""
    rows = np.asarray(rows, dtype=np.int64)
    mask = np.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype=bool)
    mask[rows] = True
    return mask


def _kept(rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ok = rows < len(mask)
    ok[ok] = mask[rows[ok]]
    return ok


def planned(order: RowOrder, keep: np.ndarray | None, offset: int, loop: bool,
            shuffle: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, rows) per window: the kept rows at positions >= ``offset``."""
    for window in order.windows_from(offset, loop, shuffle):
        rows = window.ordered
        pos = window.start + np.arange(len(rows), dtype=np.int64)
        sel = pos >= offset
        if keep is not None:
            sel &= _kept(rows, keep)
        if sel.any():
            yield pos[sel], rows[sel]


def rechunk(plans: Iterator[tuple[np.ndarray, np.ndarray]], size: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same rows in pieces of exactly ``size`` (the last of a finite stream shorter)."""
    pos_buf: list[np.ndarray] = []
    row_buf: list[np.ndarray] = []
    n = 0
    for pos, rows in plans:
        pos_buf.append(pos)
        row_buf.append(rows)
        n += len(rows)
        while n >= size:
            p, r = np.concatenate(pos_buf), np.concatenate(row_buf)
            yield p[:size], r[:size]
            pos_buf, row_buf, n = [p[size:]], [r[size:]], n - size
    if n:
        yield np.concatenate(pos_buf), np.concatenate(row_buf)


class Consumer:
    """Cuts batches of ``batch_size`` from the rows of a stream it ``keep`` s (None: all)."""

    def __init__(self, batch_size: int, keep: np.ndarray | None, position: int = 0) -> None:
        self.batch_size, self.keep = int(batch_size), keep
        self.position = int(position)  # resume state: after the last batch handed out
        self._seen = self.position  # positions below this were looked at already
        self._pending: list[Piece] = []
        self._count = 0

    def feed(self, piece: Piece) -> Iterator[tuple[Feats, np.ndarray]]:
        """Batches (features, store rows) completed by this piece."""
        sel = piece.positions >= self._seen
        if self.keep is not None:
            sel &= _kept(piece.rows, self.keep)
        if len(piece.positions):
            self._seen = max(self._seen, int(piece.positions[-1]) + 1)
        idx = np.flatnonzero(sel)
        if len(idx):
            self._pending.append(_take(piece, idx))
            self._count += len(idx)
        while self._count >= self.batch_size:
            yield self._cut(self.batch_size)
        # the rest (less than a batch) is copied out, so the piece's window can be freed
        self._pending = [_owned(part) for part in self._pending]

    def flush(self) -> Iterator[tuple[Feats, np.ndarray]]:
        """The last, shorter batch of a finite stream."""
        if self._count:
            yield self._cut(self._count)

    def _cut(self, size: int) -> tuple[Feats, np.ndarray]:
        need, parts = size, []
        while need:
            part = self._pending[0]
            k = min(need, len(part.rows))
            parts.append(_slice(part, 0, k))
            if k == len(part.rows):
                self._pending.pop(0)
            else:
                self._pending[0] = _slice(part, k, len(part.rows))
            need -= k
        self._count -= size
        self.position = int(parts[-1].positions[-1]) + 1
        if len(parts) == 1:
            return parts[0].feats, parts[0].rows
        feats = {i: torch.cat([p.feats[i] for p in parts]) for i in parts[0].feats}
        return feats, np.concatenate([p.rows for p in parts])


def _owned(piece: Piece) -> Piece:
    """``piece`` with features that hold only their own rows (views are copied)."""
    feats = {i: t if t.untyped_storage().nbytes() == t.nbytes else t.clone()
             for i, t in piece.feats.items()}
    return Piece(piece.positions, piece.rows, feats)


def _take(piece: Piece, idx: np.ndarray) -> Piece:
    if idx[-1] - idx[0] + 1 == len(idx):  # contiguous: views, no copy
        return _slice(piece, int(idx[0]), int(idx[-1]) + 1)
    return Piece(piece.positions[idx], piece.rows[idx],
                 {i: gather(t, idx) for i, t in piece.feats.items()})


def _slice(piece: Piece, a: int, b: int) -> Piece:
    return Piece(piece.positions[a:b], piece.rows[a:b],
                 {i: t[a:b] for i, t in piece.feats.items()})


def gather(source: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """``source[index]``. On CPU through numpy: one thread, GIL released, where a torch op
    on a reader thread would start an OpenMP team that fights the I/O threads."""
    if source.device.type != "cpu":
        return source.index_select(0, torch.from_numpy(index).to(source.device))
    out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype)
    np.take(numpy_view(source), index, axis=0, out=numpy_view(out))
    return out


class FeatureCache:
    """Some rows of some blocks, read once (in store order) and held in RAM or on the GPU."""

    def __init__(self, reader: object, rows: np.ndarray, layers: Sequence[int],
                 tokens: int, dim: int, dtype: torch.dtype, device: torch.device,
                 progress: bool = False) -> None:
        self.rows, self.layers = np.asarray(rows, np.int64), tuple(sorted(layers))
        self.device = device
        shape = (len(self.rows), tokens, dim)
        self.feats = {i: torch.empty(shape, dtype=dtype, device=device) for i in self.layers}
        with tqdm(total=len(self.rows), unit="img", unit_scale=True, desc="cache",
                  disable=not progress, dynamic_ncols=True) as bar:
            pos = 0
            for piece in reader.pieces(0, loop=False, shuffle=False):  # type: ignore[attr-defined]
                n = len(piece.rows)
                for i in self.layers:
                    self.feats[i][pos:pos + n].copy_(piece.feats[i])
                pos += n
                bar.update(n)
        self.bytes_read = int(reader.bytes_read)  # type: ignore[attr-defined]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.feats.values())

    def holds(self, rows: np.ndarray, layers: Sequence[int]) -> bool:
        return set(layers) <= set(self.layers) and bool(np.isin(rows, self.rows).all())

    def gather(self, rows: np.ndarray, layers: Sequence[int]) -> Feats:
        idx = np.searchsorted(self.rows, rows)
        return {i: gather(self.feats[i], idx) for i in layers}


class CacheFeed:
    """An order's pieces gathered from a :class:`FeatureCache` (no reads)."""

    bytes_read = 0

    def __init__(self, cache: FeatureCache, order: RowOrder, keep: np.ndarray | None,
                 layers: Sequence[int]) -> None:
        self.cache, self.order, self.keep = cache, order, keep
        self.layers = tuple(sorted(layers))

    def pieces(self, offset: int, loop: bool, shuffle: bool) -> Iterator[Piece]:
        for pos, rows in planned(self.order, self.keep, offset, loop, shuffle):
            yield Piece(pos, rows, self.cache.gather(rows, self.layers))

    def close(self) -> None:
        pass
