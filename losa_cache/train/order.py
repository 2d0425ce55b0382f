"""The order rows are visited in: chunk order + a shuffle buffer, reshuffled every epoch.

A store reads well a whole chunk at a time, so an epoch visits *chunks* in a random
order and shuffles rows only inside a *window* of ``buffer_chunks`` chunks (the
shuffle buffer). Training is one endless stream of epochs cut into batches of exactly
``batch_size`` rows (a batch may straddle two epochs), so batch ``k`` is rows
``[k * B, (k + 1) * B)`` of the stream and a resumed run only needs the row offset.

Everything here is a pure function of (rows, chunk_rows, buffer_chunks, seed, epoch):
the cached reader, its RAM/GPU caches and live mode all see the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["RowOrder", "StreamPosition", "Window", "buffer_chunks_for", "cut_batches",
           "default_buffer_rows"]


@dataclass(frozen=True)
class Window:
    """A shuffle buffer: some chunks, their rows (sorted) and the order to visit them in."""

    key: tuple[int, int]  # (epoch, index in epoch)
    chunks: np.ndarray  # sorted chunk ids
    rows: np.ndarray  # sorted store rows of those chunks (the read order)
    perm: np.ndarray  # visiting order: positions into ``rows``

    @property
    def ordered(self) -> np.ndarray:
        return self.rows[self.perm]

    def __len__(self) -> int:
        return len(self.rows)


class RowOrder:
    """Chunk-aware row order over a sorted set of store rows."""

    def __init__(self, rows: np.ndarray, chunk_rows: int, buffer_chunks: int, seed: int) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError("no rows to iterate over")
        if np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be sorted and distinct")
        self.rows = rows
        self.chunk_rows = int(chunk_rows)
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.seed = int(seed)
        chunk_of = rows // self.chunk_rows
        self.chunks, starts = np.unique(chunk_of, return_index=True)
        self._bounds = np.append(starts, len(rows))  # rows of chunks[i]: bounds[i]:bounds[i+1]

    def __len__(self) -> int:
        return len(self.rows)

    def windows(self, epoch: int, shuffle: bool) -> list[Window]:
        """The windows of one epoch, in visiting order."""
        n = len(self.chunks)
        rng = np.random.default_rng([self.seed, epoch]) if shuffle else None
        idx = rng.permutation(n) if rng is not None else np.arange(n)
        out = []
        for w, lo in enumerate(range(0, n, self.buffer_chunks)):
            members = np.sort(idx[lo:lo + self.buffer_chunks])
            rows = np.concatenate([self.rows[self._bounds[i]:self._bounds[i + 1]] for i in members])
            perm = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
            out.append(Window((epoch, w), self.chunks[members], rows, perm))
        return out

    def epoch_rows(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """All rows of an epoch in visiting order."""
        return np.concatenate([w.ordered for w in self.windows(epoch, shuffle)])

    def windows_from(self, offset: int, loop: bool, shuffle: bool
                     ) -> Iterator[tuple[Window, int]]:
        """(window, rows of it to skip) from stream position ``offset`` on."""
        epoch, skip = divmod(int(offset), len(self.rows))
        while True:
            for window in self.windows(epoch, shuffle):
                if skip >= len(window):
                    skip -= len(window)
                    continue
                yield window, skip
                skip = 0
            if not loop:
                return
            epoch += 1


Segment = tuple[object, Window, int, int]  # (payload, window, start, stop) in visiting order


def cut_batches(pieces: Iterator[tuple[object, Window, int]], batch_size: int,
                drop_last: bool = False) -> Iterator[list[Segment]]:
    """Cut a stream of (payload, window, skip) into batches of exactly ``batch_size`` rows.

    A batch is a list of segments ``(payload, window, a, b)``: positions ``a:b`` of the
    window's visiting order. The last, shorter batch of a finite stream is kept unless
    ``drop_last``.
    """
    batch: list[Segment] = []
    need = batch_size
    for payload, window, skip in pieces:
        a = skip
        while a < len(window):
            b = min(len(window), a + need)
            batch.append((payload, window, a, b))
            need -= b - a
            a = b
            if need == 0:
                yield batch
                batch, need = [], batch_size
    if batch and not drop_last:
        yield batch


def buffer_chunks_for(order_rows: int, num_chunks: int, buffer_rows: int) -> int:
    """Chunks per window so that a window holds about ``buffer_rows`` rows."""
    per_chunk = order_rows / max(1, num_chunks)
    return max(1, min(num_chunks, math.ceil(buffer_rows / per_chunk)))


def default_buffer_rows(batch_size: int, num_rows: int, row_bytes: int,
                        budget_bytes: int = 1 << 30) -> int:
    """Shuffle buffer: 4 batches, within ``budget_bytes`` (never less than one batch)."""
    fit = max(1, budget_bytes // max(1, row_bytes))
    return int(min(num_rows, max(batch_size, min(4 * batch_size, fit))))


class StreamPosition:
    """Resume state of a reader's training stream (needs ``order``, ``offset``, ``batch_size``)."""

    order: RowOrder
    offset: int
    batch_size: int

    def state_dict(self) -> dict:
        return {"offset": self.offset, "seed": self.order.seed, "num_rows": len(self.order),
                "batch_size": self.batch_size, "buffer_chunks": self.order.buffer_chunks,
                "chunk_rows": self.order.chunk_rows}

    def check_state(self, state: dict) -> None:
        """Refuse to resume a stream over a different row set or order."""
        mine = self.state_dict()
        bad = [k for k in mine if k != "offset" and state.get(k) != mine[k]]
        if bad:
            raise ValueError(f"cannot resume: the batch order differs from the checkpoint's in "
                             f"{bad} (checkpoint {[state.get(k) for k in bad]}, now "
                             f"{[mine[k] for k in bad]})")
