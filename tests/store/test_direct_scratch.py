"""Checked direct reads keep the unwanted rows of a chunk in one scratch per thread: a
fresh, variable-sized buffer per read left the I/O threads' malloc arenas holding freed,
fragmented scratch (peak RSS of streamed training, issue 13)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from losa_cache.store import direct, open_store


def test_checked_reads_reuse_one_scratch_per_thread(kind_store: Callable[[str, str], str]) -> None:
    feats = open_store(kind_store("float16", "none")).features(1)
    reader = feats.direct
    assert reader is not None and reader.crc and reader.verify
    expected = torch.from_numpy(np.asarray(feats.array[:]))
    out = torch.empty((3, *expected.shape[1:]), dtype=expected.dtype)
    rows = np.array([0, 2, 4])  # one row of each 2-row chunk: the other in scratch
    reader.scatter_rows(rows, out, np.arange(3))
    scratch = direct._SCRATCH.buf
    reader.scatter_rows(np.array([5]), out[:1], np.arange(1))  # a smaller read
    assert direct._SCRATCH.buf is scratch
    assert torch.equal(out[1:], expected[rows[1:]]) and torch.equal(out[0], expected[5])
