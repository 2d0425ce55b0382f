"""Batch order: chunk order + shuffle buffer, reshuffled per epoch, resumable by offset."""

from __future__ import annotations

import itertools

import numpy as np

from losa_cache.train.order import RowOrder, buffer_chunks_for, cut_batches, default_buffer_rows

ROWS = np.array([r for r in range(100) if r % 7 != 3])  # sparse rows, like a split


def stream(order: RowOrder, batch: int, offset: int, n: int) -> list[list[int]]:
    pieces = ((None, w, s) for w, s in order.windows_from(offset, loop=True, shuffle=True))
    out = []
    for segs in itertools.islice(cut_batches(pieces, batch), n):
        out.append([int(r) for _, w, a, b in segs for r in w.ordered[a:b]])
    return out


def test_epoch_is_a_permutation_reshuffled_every_epoch() -> None:
    order = RowOrder(ROWS, chunk_rows=10, buffer_chunks=3, seed=0)
    e0, e1 = order.epoch_rows(0), order.epoch_rows(1)
    assert sorted(e0.tolist()) == ROWS.tolist() == sorted(e1.tolist())
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, RowOrder(ROWS, 10, 3, seed=0).epoch_rows(0))  # deterministic
    assert not np.array_equal(e0, RowOrder(ROWS, 10, 3, seed=1).epoch_rows(0))


def test_windows_hold_whole_chunks_within_the_buffer() -> None:
    order = RowOrder(ROWS, chunk_rows=10, buffer_chunks=3, seed=0)
    seen = []
    for w in order.windows(2, shuffle=True):
        chunks = np.unique(w.rows // 10)
        assert len(chunks) <= 3 and np.array_equal(chunks, w.chunks)
        assert np.array_equal(w.rows, ROWS[np.isin(ROWS // 10, chunks)])  # whole chunks
        seen += chunks.tolist()
    assert sorted(seen) == list(range(10))


def test_no_shuffle_is_sorted() -> None:
    order = RowOrder(ROWS, chunk_rows=10, buffer_chunks=3, seed=5)
    assert np.array_equal(order.epoch_rows(0, shuffle=False), ROWS)


def test_stream_from_an_offset_continues_the_same_stream() -> None:
    order = RowOrder(ROWS, chunk_rows=10, buffer_chunks=2, seed=3)
    full = stream(order, batch=16, offset=0, n=20)  # crosses epoch boundaries
    assert all(len(b) == 16 for b in full)
    assert stream(order, batch=16, offset=7 * 16, n=13) == full[7:]
    flat = [r for b in full for r in b]
    n = len(ROWS)
    assert sorted(flat[:n]) == ROWS.tolist() and sorted(flat[n:2 * n]) == ROWS.tolist()


def test_finite_pass_keeps_the_short_last_batch() -> None:
    order = RowOrder(ROWS, chunk_rows=10, buffer_chunks=2, seed=0)
    pieces = ((None, w, s) for w, s in order.windows_from(0, loop=False, shuffle=False))
    sizes = [sum(b - a for _, _, a, b in segs) for segs in cut_batches(pieces, 32)]
    assert sum(sizes) == len(ROWS) and sizes[-1] == len(ROWS) % 32


def test_buffer_sizing() -> None:
    assert buffer_chunks_for(order_rows=100, num_chunks=10, buffer_rows=35) == 4
    assert buffer_chunks_for(100, 10, 10_000) == 10
    assert default_buffer_rows(512, 10_000, row_bytes=1000) == 2048
    assert default_buffer_rows(512, 300, row_bytes=1000) == 300
    assert default_buffer_rows(512, 10**6, row_bytes=1 << 30) == 512  # never under a batch
