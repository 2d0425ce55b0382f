"""Feeds: where batches come from, cut into pieces that many runs consume.

A feed walks a :class:`~losa_cache.train.order.RowOrder` over the split's rows and
yields :class:`Piece` s: the rows some run wants (its task labels them), in visiting
order, each with its stream position and features. Three feeds, one interface
(``pieces(offset, loop, shuffle)``, ``bytes_read``, ``close``):

* :class:`~losa_cache.train.reader.StoreReader`: streamed from the store, a window at a
  time, read ahead on an I/O pool;
* :class:`CacheFeed`: gathered from a :class:`FeatureCache` (``--cache ram|gpu``: the
  needed rows of the needed arrays read once);
* :class:`~losa_cache.train.live.LiveFeed`: the frozen backbone run on the images.

A piece's features are keyed as side networks read them (:mod:`losa_cache.train.keys`:
block index, ``"embed"``, ``"sum:k"``, ``"attn:i"``, ``"mlp:i"``), each a (n, T, D) tensor
in the storage dtype, or for int8 stores a :class:`Quantized` pair (int8 codes, fp16
scales): pieces, batches and caches hold the codes, 1 byte a value, and
:func:`to_device` dequantizes a batch where it is used, after the transfer.

A :class:`Consumer` cuts the rows one run wants into batches of its size. Its resume
state is one stream position (after its last batch's last row), so a feed restarted at
the smallest position of its runs continues every run exactly; rows a run's task does
not label are skipped, for a run alone exactly as inside a sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

from losa_cache.progress import progress_bar
from losa_cache.store.quant import dequantize
from losa_cache.store.store import numpy_view
from losa_cache.train.keys import Key, sort_keys
from losa_cache.train.order import RowOrder

__all__ = [
    "CacheFeed",
    "Consumer",
    "FeatureCache",
    "Feed",
    "Piece",
    "Quantized",
    "keep_mask",
    "planned",
    "rechunk",
    "to_device",
]


class Quantized(NamedTuple):
    """Rows of an int8 array as stored: codes and their per-(row, token) scales."""

    codes: torch.Tensor  # (n, T, D) int8
    scales: torch.Tensor  # (n, T) float16

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def values(self) -> torch.Tensor:
        """float32 values q * s, exactly (store/quant.py), on the codes' device."""
        return dequantize(self.codes, self.scales)


Value = torch.Tensor | Quantized
Feats = dict[Key, Value]  # key -> (n, T, D), storage dtype (int8: codes and scales)


def each(value: Value, fn: Callable[[torch.Tensor], torch.Tensor]) -> Value:
    """``fn`` applied to a tensor, or to both parts of a :class:`Quantized` (row ops)."""
    if isinstance(value, Quantized):
        return Quantized(fn(value.codes), fn(value.scales))
    return fn(value)


def cat(values: Sequence[Value]) -> Value:
    if isinstance(values[0], Quantized):
        return Quantized(
            torch.cat([v.codes for v in values]), torch.cat([v.scales for v in values])
        )
    return torch.cat(values)  # type: ignore[arg-type]


def to_device(feats: Mapping[Key, Value], device: torch.device) -> dict[Key, torch.Tensor]:
    """A batch moved to ``device`` (``non_blocking``: from pinned memory on CUDA) as the
    side network reads it: int8 codes and scales cross as stored (1 byte a value) and are
    dequantized there, to float32 (exactly q * s; autocast casts on from there)."""
    out = {}
    for k, v in feats.items():
        moved = each(v, lambda t: t.to(device, non_blocking=True))
        out[k] = moved.values() if isinstance(moved, Quantized) else moved
    return out


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


def planned(
    order: RowOrder, keep: np.ndarray | None, offset: int, loop: bool, shuffle: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, rows) per window: the kept rows at positions >= ``offset``."""
    for window in order.windows_from(offset, loop, shuffle):
        rows = window.ordered
        pos = window.start + np.arange(len(rows), dtype=np.int64)
        sel = pos >= offset
        if keep is not None:
            sel &= _kept(rows, keep)
        if sel.any():
            yield pos[sel], rows[sel]


def rechunk(
    plans: Iterator[tuple[np.ndarray, np.ndarray]], size: int
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
        feats = {i: cat([p.feats[i] for p in parts]) for i in parts[0].feats}
        return feats, np.concatenate([p.rows for p in parts])


def _own(t: torch.Tensor) -> torch.Tensor:
    return t if t.untyped_storage().nbytes() == t.nbytes else t.clone()


def _owned(piece: Piece) -> Piece:
    """``piece`` with features that hold only their own rows (views are copied)."""
    return Piece(piece.positions, piece.rows, {i: each(v, _own) for i, v in piece.feats.items()})


def _take(piece: Piece, idx: np.ndarray) -> Piece:
    if idx[-1] - idx[0] + 1 == len(idx):  # contiguous: views, no copy
        return _slice(piece, int(idx[0]), int(idx[-1]) + 1)
    return Piece(
        piece.positions[idx],
        piece.rows[idx],
        {i: each(v, lambda t: gather(t, idx)) for i, v in piece.feats.items()},
    )


def _slice(piece: Piece, a: int, b: int) -> Piece:
    return Piece(
        piece.positions[a:b],
        piece.rows[a:b],
        {i: each(v, lambda t: t[a:b]) for i, v in piece.feats.items()},
    )


def gather(source: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """``source[index]``. On CPU through numpy: one thread, GIL released, where a torch op
    on a reader thread would start an OpenMP team that fights the I/O threads."""
    if source.device.type != "cpu":
        return source.index_select(0, torch.from_numpy(index).to(source.device))
    out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype)
    np.take(numpy_view(source), index, axis=0, out=numpy_view(out))
    return out


class FeatureCache:
    """Some rows of some arrays, read once (in store order) and held in RAM or on the GPU,
    as the reader yields them: the storage dtype, int8 as codes and scales, a ``sum:k``
    the feed derives from blocks as its one fp32 map."""

    def __init__(
        self,
        reader: object,
        rows: np.ndarray,
        keys: Sequence[Key],
        device: torch.device,
        progress: bool = False,
    ) -> None:
        self.rows, self.keys = np.asarray(rows, np.int64), sort_keys(keys)
        self.device = device
        self.feats: Feats = {}
        with progress_bar(len(self.rows), "cache", "img", progress, unit_scale=True) as bar:
            pos = 0
            for piece in reader.pieces(0, loop=False, shuffle=False):  # type: ignore[attr-defined]
                n = len(piece.rows)
                if not self.feats:  # shapes and dtypes as the reader yields them
                    self.feats = {k: each(piece.feats[k], self._empty) for k in self.keys}
                for k in self.keys:
                    _copy(self.feats[k], piece.feats[k], pos, n)
                pos += n
                bar.update(n)
        self.bytes_read = int(reader.bytes_read)  # type: ignore[attr-defined]

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty((len(self.rows), *like.shape[1:]), dtype=like.dtype, device=self.device)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.feats.values())

    def holds(self, rows: np.ndarray, keys: Sequence[Key]) -> bool:
        return set(keys) <= set(self.keys) and bool(np.isin(rows, self.rows).all())

    def gather(self, rows: np.ndarray, keys: Sequence[Key]) -> Feats:
        idx = np.searchsorted(self.rows, rows)
        return {k: each(self.feats[k], lambda t: gather(t, idx)) for k in keys}


def _copy(dst: Value, src: Value, pos: int, n: int) -> None:
    if isinstance(dst, Quantized):
        dst.codes[pos : pos + n].copy_(src.codes)  # type: ignore[union-attr]
        dst.scales[pos : pos + n].copy_(src.scales)  # type: ignore[union-attr]
    else:
        dst[pos : pos + n].copy_(src)  # type: ignore[arg-type]


class CacheFeed:
    """An order's pieces gathered from a :class:`FeatureCache` (no reads)."""

    bytes_read = 0

    def __init__(
        self, cache: FeatureCache, order: RowOrder, keep: np.ndarray | None, keys: Sequence[Key]
    ) -> None:
        self.cache, self.order, self.keep = cache, order, keep
        self.keys = sort_keys(keys)

    def pieces(self, offset: int, loop: bool, shuffle: bool) -> Iterator[Piece]:
        for pos, rows in planned(self.order, self.keep, offset, loop, shuffle):
            yield Piece(pos, rows, self.cache.gather(rows, self.keys))

    def close(self) -> None:
        pass
