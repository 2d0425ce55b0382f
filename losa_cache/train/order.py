"""The order rows are visited in: windows of the split's rows + a shuffle buffer, per epoch.

An epoch cuts the split's sorted rows into *windows* of ``buffer_rows`` consecutive rows
(the shuffle buffer), visits the windows in a random order and the rows of each window
in a random order. A window is a contiguous range of the split, so a store reads it as
few contiguous file ranges whatever its chunking. Training is one endless stream of
epochs; a stream *position* counts rows of that stream, so a resumed run needs one
number.

Everything here is a pure function of (rows, buffer_rows, seed, epoch): never of the
store's dtype, chunking, compression, cache mode or live mode. So is the augmented view
each row shows in an epoch, where a training order has ``views``
(:func:`losa_cache.augment.draw_views`; evaluation orders have none, so evaluation never
sees an augmented view). A task that labels only
some rows keeps the order over the split's rows and drops the others (see
:mod:`losa_cache.train.feed`), so a run sees the same batches alone or in a sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from losa_cache.augment import ViewDraw

__all__ = ["BUFFER_BYTES", "RowOrder", "Window", "default_buffer_rows"]

#: the default shuffle buffer holds at most this many bytes of fp16 features
BUFFER_BYTES = 1 << 30


@dataclass(frozen=True)
class Window:
    """A shuffle buffer: consecutive rows of the split and the order to visit them in."""

    key: tuple[int, int]  # (epoch, index in epoch)
    start: int  # stream position of the window's first visited row
    rows: np.ndarray  # sorted store rows (the read order)
    perm: np.ndarray  # visiting order: positions into ``rows``

    @property
    def ordered(self) -> np.ndarray:
        return self.rows[self.perm]

    def __len__(self) -> int:
        return len(self.rows)


class RowOrder:
    """Shuffled windows of consecutive rows over a sorted set of store rows."""

    def __init__(
        self, rows: np.ndarray, buffer_rows: int, seed: int, views: ViewDraw | None = None
    ) -> None:
        """``views``: which augmented view each row shows per epoch (None: the clean one)."""
        self.views = views
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise ValueError("no rows to iterate over")
        if np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be sorted and distinct")
        self.rows, self.seed = rows, int(seed)
        self.buffer_rows = max(1, min(len(rows), int(buffer_rows)))
        self.num_windows = -(-len(rows) // self.buffer_rows)

    def __len__(self) -> int:
        return len(self.rows)

    def key(self) -> tuple[bytes, int, int, int]:
        """Equal keys, equal streams (the views drawn included)."""
        return self.rows.tobytes(), self.buffer_rows, self.seed, self.view_count

    @property
    def view_count(self) -> int:
        """Augmented views drawn from besides the clean one (0: clean only)."""
        return 0 if self.views is None else self.views.count

    def view_of(self, positions: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """The view (0: clean) each row shows at its stream position; None without views."""
        if self.views is None:
            return None
        epochs = np.asarray(positions, dtype=np.int64) // len(self.rows)
        return self.views.draw(self.seed, epochs, rows)

    def windows(self, epoch: int, shuffle: bool) -> list[Window]:
        """The windows of one epoch, in visiting order."""
        rng = np.random.default_rng([self.seed, epoch]) if shuffle else None
        idx = rng.permutation(self.num_windows) if rng is not None else range(self.num_windows)
        out, start = [], epoch * len(self.rows)
        for w, i in enumerate(idx):
            rows = self.rows[i * self.buffer_rows : (i + 1) * self.buffer_rows]
            perm = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
            out.append(Window((epoch, w), start, rows, perm))
            start += len(rows)
        return out

    def epoch_rows(self, epoch: int, shuffle: bool = True) -> np.ndarray:
        """All rows of an epoch in visiting order."""
        return np.concatenate([w.ordered for w in self.windows(epoch, shuffle)])

    def windows_from(self, offset: int, loop: bool, shuffle: bool) -> Iterator[Window]:
        """The windows holding stream positions ``offset`` onwards (the first may be
        partly before it)."""
        epoch = int(offset) // len(self.rows)
        while True:
            for window in self.windows(epoch, shuffle):
                if window.start + len(window) > offset:
                    yield window
            if not loop:
                return
            epoch += 1


def default_buffer_rows(
    batch_size: int, num_rows: int, row_bytes: int, budget_bytes: int = BUFFER_BYTES
) -> int:
    """Shuffle buffer: 4 batches, within ``budget_bytes`` (never less than one batch).

    ``row_bytes`` is what a row of the needed blocks holds in fp16, whatever the store's
    dtype: the default order must not depend on the store's layout.
    """
    fit = max(1, budget_bytes // max(1, row_bytes))
    return int(min(num_rows, max(batch_size, min(4 * batch_size, fit))))
