"""Batch order: shuffled windows of consecutive split rows, reshuffled per epoch, resumable."""

from __future__ import annotations

import numpy as np

from losa_cache.train.feed import Consumer, Piece, keep_mask, planned, rechunk
from losa_cache.train.order import RowOrder, default_buffer_rows

ROWS = np.array([r for r in range(100) if r % 7 != 3])  # sparse rows, like a split


def stream(order: RowOrder, batch: int, offset: int, n: int, keep=None) -> list[list[int]]:
    consumer = Consumer(batch, keep, offset)
    out: list[list[int]] = []
    for pos, rows in planned(order, None, offset, loop=True, shuffle=True):
        for _, got in consumer.feed(Piece(pos, rows, {})):
            out.append(got.tolist())
        if len(out) >= n:
            return out[:n]
    return out


def test_epoch_is_a_permutation_reshuffled_every_epoch() -> None:
    order = RowOrder(ROWS, buffer_rows=30, seed=0)
    e0, e1 = order.epoch_rows(0), order.epoch_rows(1)
    assert sorted(e0.tolist()) == ROWS.tolist() == sorted(e1.tolist())
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e0, RowOrder(ROWS, 30, seed=0).epoch_rows(0))  # deterministic
    assert not np.array_equal(e0, RowOrder(ROWS, 30, seed=1).epoch_rows(0))


def test_windows_are_consecutive_rows_of_the_split() -> None:
    order = RowOrder(ROWS, buffer_rows=30, seed=0)
    seen = []
    for w in order.windows(2, shuffle=True):
        lo = int(np.searchsorted(ROWS, w.rows[0]))
        assert np.array_equal(w.rows, ROWS[lo : lo + len(w)]) and len(w) <= 30
        seen += w.rows.tolist()
    assert sorted(seen) == ROWS.tolist()


def test_no_shuffle_is_sorted() -> None:
    order = RowOrder(ROWS, buffer_rows=30, seed=5)
    assert np.array_equal(order.epoch_rows(0, shuffle=False), ROWS)


def test_stream_from_an_offset_continues_the_same_stream() -> None:
    order = RowOrder(ROWS, buffer_rows=20, seed=3)
    full = stream(order, batch=16, offset=0, n=20)  # crosses epoch boundaries
    assert all(len(b) == 16 for b in full)
    assert stream(order, batch=16, offset=7 * 16, n=13) == full[7:]
    flat = [r for b in full for r in b]
    n = len(ROWS)
    assert sorted(flat[:n]) == ROWS.tolist() and sorted(flat[n : 2 * n]) == ROWS.tolist()


def test_a_task_on_some_rows_keeps_the_splits_order_and_drops_the_others() -> None:
    order = RowOrder(ROWS, buffer_rows=20, seed=3)
    labelled = ROWS[ROWS % 2 == 0]
    mine = stream(order, 8, 0, 12, keep=keep_mask(labelled))
    expect = [r for e in range(3) for r in order.epoch_rows(e).tolist() if r % 2 == 0]
    assert [r for b in mine for r in b] == expect[:96]


def test_rechunk_and_finite_pass_keep_the_short_last_piece() -> None:
    order = RowOrder(ROWS, buffer_rows=20, seed=0)
    pieces = list(rechunk(planned(order, None, 0, loop=False, shuffle=False), 32))
    sizes = [len(r) for _, r in pieces]
    assert sum(sizes) == len(ROWS) and sizes[-1] == len(ROWS) % 32
    assert np.concatenate([r for _, r in pieces]).tolist() == ROWS.tolist()


def test_buffer_sizing() -> None:
    assert default_buffer_rows(512, 10_000, row_bytes=1000) == 2048
    assert default_buffer_rows(512, 300, row_bytes=1000) == 300
    assert default_buffer_rows(512, 10**6, row_bytes=1 << 30) == 512  # never under a batch
    (whole,) = RowOrder(ROWS, 10**6, 0).windows(0, True)  # a buffer over the split: one window
    assert len(whole) == len(ROWS)
