"""Direct reads of local, uncompressed, sharded feature arrays (no zarr decode).

Block activations do not compress (benchmarks/codecs.py), so stores default to codec
``none`` and a chunk on disk is just its rows, C order, little-endian. zarr still decodes
every chunk into a fresh buffer and copies it into the result: two copies and a lot of
Python per chunk, 3-4x below read(2) from a warm shard. Here the Zarr v3 shard index
(``sharding_indexed``: per inner chunk an (offset, nbytes) uint64 little-endian pair, then
a crc32c of the index; all-ones = empty chunk) is parsed once per shard file and the
wanted rows' bytes are ``preadv``'d straight into the caller's buffer (the GIL is
released in the syscall, so callers' threads read in parallel). :meth:`scatter_rows`
gives each row its own destination: one ``preadv`` per contiguous file range, its
buffers being the rows' slots, shuffles a window for free. Any other layout
(compressed, remote, chunked along other axes, big-endian...) returns None from
:func:`direct_reader` and callers stay on zarr.

Chunks written with a ``crc32c`` codec (schema 2 stores) end in the crc32c of their
bytes. Those are read whole: the rows asked for into their slots, the rest of the chunk
and its 4 checksum bytes into scratch, all in the same ``preadv``; the crc32c is then
computed over the pieces in file order (hardware crc32c, GIL released) and a mismatch
raises :class:`ShardIndexError` (a StoreIntegrityError) naming the shard and file.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import torch
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.storage import LocalStore

from losa_cache.store.errors import StoreIntegrityError, damage_message

__all__ = ["DirectReader", "ShardIndexError", "as_bytes", "direct_reader"]

EMPTY = np.uint64(2**64 - 1)  # offset/nbytes of a chunk that was never written
#: env switch: "0" keeps every read on zarr (A/B comparisons, debugging)
DIRECT_ENV = "LOSA_CACHE_DIRECT"
#: env switch: "0" reads only the rows asked for, unchecked, from checksummed chunks
#: (the reader benchmark's verified-vs-unverified row; zarr's own reads always check)
VERIFY_ENV = "LOSA_CACHE_VERIFY"
_SCRATCH = threading.local()
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers per preadv


class ShardIndexError(StoreIntegrityError):
    """A shard file whose index, size or chunk checksums do not match what was written."""


@dataclass
class DirectReader:
    """Reads rows ``[lo, hi)`` of one array straight from its shard files."""

    root: Path  # the array's folder
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int
    shard_rows: int
    row_bytes: int
    index_at_end: bool
    fill_row: bytes = field(repr=False)  # one row of the fill value
    key: Any = field(repr=False)  # the array metadata: encode_chunk_key names shard files
    store: str = ""  # the store's path and the array's name in it, for messages
    name: str = ""
    #: chunks end in a crc32c (4 bytes after their rows)
    crc: bool = False
    #: read whole checksummed chunks and check them (else just the rows asked for)
    verify: bool = True
    #: done marker per shard (a store's arrays): a done shard without a file is damage
    done: np.ndarray | None = None
    _indexes: dict[int, tuple[tuple[int, int, int], np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_rows // self.chunk_rows

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one chunk on disk (its crc32c included)."""
        return self.chunk_rows * self.row_bytes + 4 * self.crc

    def shard_path(self, shard: int) -> str:
        key = self.key.encode_chunk_key((shard,) + (0,) * (len(self.shape) - 1))
        return str(self.root / key)

    def _damaged(self, shard: int, reason: str) -> ShardIndexError:
        return ShardIndexError(
            damage_message(self.store, self.name, shard, self.shard_path(shard), reason)
        )

    # ------------------------------------------------------------------ index

    def _index(self, shard: int, fd: int) -> np.ndarray:
        """(chunks, 2) uint64 offsets and sizes of an open shard file, cached per file
        identity (a rewritten shard is a new inode or size or mtime)."""
        st = os.fstat(fd)
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._indexes.get(shard)
        if hit is not None and hit[0] == ident:
            return hit[1]
        n = self.chunks_per_shard
        size = 16 * n + 4
        if st.st_size < size:
            raise self._damaged(
                shard,
                f"{st.st_size} bytes, too short for a shard index of {n} chunks (truncated file)",
            )
        raw = os.pread(fd, size, st.st_size - size if self.index_at_end else 0)
        if len(raw) != size:
            raise self._damaged(shard, "short read of the shard index")
        crc = int.from_bytes(raw[-4:], "little")
        if crc32c.crc32c(raw[:-4]) != crc:
            raise self._damaged(shard, "shard index checksum mismatch")
        index = np.frombuffer(raw[:-4], dtype="<u8").reshape(n, 2)
        empty = (index[:, 0] == EMPTY) & (index[:, 1] == EMPTY)
        bad = ~empty & (
            (index[:, 1] != self.chunk_bytes) | (index[:, 0] + index[:, 1] > st.st_size)
        )
        if bad.any():
            c = int(np.flatnonzero(bad)[0])
            raise self._damaged(
                shard,
                f"chunk {c} is {int(index[c, 1])} bytes at "
                f"{int(index[c, 0])}; an uncompressed chunk is "
                f"{self.chunk_bytes} bytes inside a {st.st_size}-byte file",
            )
        with self._lock:
            self._indexes[shard] = (ident, index)
        return index

    # ------------------------------------------------------------------ reading

    def read_into(self, lo: int, hi: int, out: np.ndarray | torch.Tensor) -> int:
        """Rows ``[lo, hi)`` into ``out`` (C-contiguous, ``(hi - lo) * row_bytes`` bytes):
        returns the bytes read from files (fill-value rows read nothing)."""
        if not 0 <= lo <= hi <= self.shape[0]:
            raise IndexError(f"rows [{lo}, {hi}) out of range for {self.shape[0]} rows")
        buf = as_bytes(out)
        if len(buf) != (hi - lo) * self.row_bytes:
            raise ValueError(
                f"output holds {len(buf)} bytes, rows [{lo}, {hi}) need "
                f"{(hi - lo) * self.row_bytes}"
            )
        return self.scatter_rows(np.arange(lo, hi), buf, np.arange(hi - lo))

    def scatter_rows(
        self, rows: np.ndarray, out: np.ndarray | torch.Tensor, slots: np.ndarray
    ) -> int:
        """Row ``rows[i]`` into row ``slots[i]`` of ``out``. Rows that follow each other in
        a file are one ``preadv`` whose buffers are their slots, so a shuffle costs no copy
        of its own and whole chunks cost one call. Returns the bytes read from files."""
        rows, slots = np.asarray(rows, np.int64), np.asarray(slots, np.int64)
        rb, buf = self.row_bytes, as_bytes(out)
        if len(slots) != len(rows):
            raise ValueError(f"{len(slots)} slots for {len(rows)} rows")
        if not len(rows):
            return 0
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows out of range for {self.shape[0]} rows")
        if slots.min() < 0 or (slots.max() + 1) * rb > len(buf):
            raise IndexError(f"slots out of range for an output of {len(buf) // rb} rows")
        order = np.argsort(rows, kind="stable")
        rows, slots = rows[order], slots[order]
        mv = memoryview(buf)
        shards = rows // self.shard_rows
        cuts = [0, *(np.flatnonzero(np.diff(shards)) + 1).tolist(), len(rows)]
        got = 0
        for a, b in itertools.pairwise(cuts):
            shard = int(shards[a])
            got += self._scatter_shard(shard, rows[a:b] - shard * self.shard_rows, slots[a:b], mv)
        return got

    def _scatter_shard(
        self, shard: int, local: np.ndarray, slots: np.ndarray, out: memoryview
    ) -> int:
        """Shard-local rows ``local`` (sorted) into rows ``slots`` of ``out``."""
        rb = self.row_bytes
        try:
            fd = os.open(self.shard_path(shard), os.O_RDONLY)
        except FileNotFoundError:  # never written: zarr reads the fill value too
            if self.done is not None and self.done[shard]:
                raise self._damaged(
                    shard, "its file is missing but the shard is marked done"
                ) from None
            for s in slots.tolist():
                self._fill(np.frombuffer(out[s * rb : (s + 1) * rb], np.uint8))
            return 0
        try:
            if self.crc and self.verify:
                return self._scatter_checked(shard, fd, local, slots, out)
            return self._scatter_unchecked(shard, fd, local, slots, out)
        except EOFError as e:
            raise self._damaged(shard, str(e)) from None
        finally:
            os.close(fd)

    def _scatter_unchecked(
        self, shard: int, fd: int, local: np.ndarray, slots: np.ndarray, out: memoryview
    ) -> int:
        """Rows without checksums: exactly the rows' bytes, one preadv per file range."""
        rb, got = self.row_bytes, 0
        offsets, empty, runs = self._file_runs(shard, fd, local)
        for a, b in runs:
            run = slots[a:b]
            if len(run) > 1 and (np.diff(run) == 1).all():  # in order: one buffer
                views = [out[int(run[0]) * rb : (int(run[-1]) + 1) * rb]]
            else:  # shuffled: a buffer per row
                views = [out[s * rb : (s + 1) * rb] for s in run.tolist()]
            if empty[a]:
                for view in views:
                    self._fill(np.frombuffer(view, np.uint8))
            else:
                got += _preadv_all(fd, views, int(offsets[a]))
        return got

    def _scatter_checked(
        self, shard: int, fd: int, local: np.ndarray, slots: np.ndarray, out: memoryview
    ) -> int:
        """Rows of checksummed chunks: every chunk holding one is read whole (its other
        rows and crc32c into scratch) and checked; chunks that follow each other in the
        file are one preadv. A row asked for twice is read once, then copied."""
        index = self._index(shard, fd)
        cr, rb = self.chunk_rows, self.row_bytes
        first = np.r_[True, np.diff(local) != 0]
        chunk_of = local // cr
        bounds = [0, *(np.flatnonzero(np.diff(chunk_of)) + 1).tolist(), len(local)]
        pieces = []  # (chunk, a, b): local[a:b] lie in chunk
        for a, b in itertools.pairwise(bounds):
            c = int(chunk_of[a])
            if index[c, 0] == EMPTY and index[c, 1] == EMPTY:  # never written: fill value
                for s in slots[a:b].tolist():
                    self._fill(np.frombuffer(out[s * rb : (s + 1) * rb], np.uint8))
            else:
                pieces.append((c, a, b))
        got, i = 0, 0
        while i < len(pieces):
            j = i + 1
            while (
                j < len(pieces)
                and int(index[pieces[j][0], 0])
                == int(index[pieces[j - 1][0], 0]) + self.chunk_bytes
            ):
                j += 1
            got += self._read_chunks(
                shard, fd, index, pieces[i:j], local[first], slots[first], np.cumsum(first) - 1, out
            )
            i = j
        for k in np.flatnonzero(~first).tolist():  # repeats, in order: copy the one before
            a, b = int(slots[k - 1]) * rb, int(slots[k]) * rb
            out[b : b + rb] = out[a : a + rb]
        return got

    def _read_chunks(
        self,
        shard: int,
        fd: int,
        index: np.ndarray,
        pieces: list[tuple[int, int, int]],
        rows: np.ndarray,
        slots: np.ndarray,
        at: np.ndarray,
        out: memoryview,
    ) -> int:
        """Chunks adjacent in the file, in one preadv, then their checksums. ``rows`` and
        ``slots`` are the unique rows; ``at`` maps a position in ``local`` to them."""
        cr, rb = self.chunk_rows, self.row_bytes
        wanted = [
            (c, rows[at[a] : at[b - 1] + 1].tolist(), slots[at[a] : at[b - 1] + 1].tolist())
            for c, a, b in pieces
        ]
        spare = sum(cr - len(r) for _, r, _ in wanted)
        scratch = _scratch(spare * rb + 4 * len(pieces))
        views: list[memoryview] = []
        checks, pos = [], 0
        for c, want, where in wanted:
            start, r, k = len(views), c * cr, 0
            while r < (c + 1) * cr:
                if k < len(want) and want[k] == r:  # rows asked for: a run of slots
                    k2 = k + 1
                    while (
                        k2 < len(want)
                        and want[k2] == want[k2 - 1] + 1
                        and where[k2] == where[k2 - 1] + 1
                    ):
                        k2 += 1
                    views.append(out[where[k] * rb : (where[k2 - 1] + 1) * rb])
                    r, k = want[k2 - 1] + 1, k2
                else:  # rows not asked for: scratch
                    n = (want[k] if k < len(want) else (c + 1) * cr) - r
                    views.append(scratch[pos : pos + n * rb])
                    r, pos = r + n, pos + n * rb
            views.append(scratch[pos : pos + 4])  # the chunk's crc32c
            pos += 4
            checks.append((c, start, len(views)))
        got = _preadv_all(fd, views, int(index[pieces[0][0], 0]))
        for c, a, b in checks:
            crc = 0
            for view in views[a : b - 1]:
                crc = crc32c.crc32c(view, crc)
            if crc != int.from_bytes(views[b - 1], "little"):
                raise self._damaged(shard, f"chunk {c} fails its crc32c checksum")
        return got - 4 * len(pieces)  # the chunks' rows, as zarr's whole-chunk reads count

    def _file_runs(
        self, shard: int, fd: int, local: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """Byte offset of each shard-local row (sorted) in the open shard file, whether its
        chunk is empty (never written: the fill value), and ``[a, b)`` runs of rows that
        follow each other in the file (one read or hint each)."""
        index = self._index(shard, fd)
        chunk = local // self.chunk_rows
        empty = (index[chunk, 0] == EMPTY) & (index[chunk, 1] == EMPTY)
        offsets = np.where(
            empty,
            -1,
            index[chunk, 0].astype(np.int64) + (local - chunk * self.chunk_rows) * self.row_bytes,
        )
        follow = (np.diff(offsets) == self.row_bytes) & ~empty[1:] & ~empty[:-1]
        cuts = [0, *(np.flatnonzero(~follow) + 1).tolist(), len(local)]
        return offsets, empty, list(itertools.pairwise(cuts))

    def advise(self, lo: int, hi: int) -> None:
        """Ask the kernel to start reading rows ``[lo, hi)`` into the page cache
        (POSIX_FADV_WILLNEED: asynchronous, no memory of ours): a read that follows
        finds them there or in flight, so the disk has a deep queue of work."""
        if not hasattr(os, "posix_fadvise"):
            return
        row = lo
        while row < hi:
            shard = row // self.shard_rows
            end = min(hi, (shard + 1) * self.shard_rows)
            try:
                fd = os.open(self.shard_path(shard), os.O_RDONLY)
            except FileNotFoundError:
                row = end
                continue
            try:
                local = np.arange(row, end) - shard * self.shard_rows
                offsets, empty, runs = self._file_runs(shard, fd, local)
                for a, b in runs:
                    if not empty[a]:
                        os.posix_fadvise(
                            fd, int(offsets[a]), (b - a) * self.row_bytes, os.POSIX_FADV_WILLNEED
                        )
            finally:
                os.close(fd)
            row = end

    def _fill(self, view: np.ndarray) -> None:
        if not any(self.fill_row):
            view[:] = 0
        else:
            view.reshape(-1, self.row_bytes)[:] = np.frombuffer(self.fill_row, np.uint8)


def _preadv_all(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill ``views`` from consecutive bytes at ``offset``: one preadv per ``IOV_MAX`` of
    them; a short read (signals, some file systems) goes on where it stopped."""
    views, done, i = list(views), 0, 0
    while i < len(views):
        k = os.preadv(fd, views[i : i + IOV_MAX], offset + done)
        if k == 0:
            raise EOFError(
                f"the file ends at byte {offset + done}, inside a chunk (truncated file)"
            )
        done += k
        while k:
            n = len(views[i])
            if k >= n:
                k, i = k - n, i + 1
            else:
                views[i], k = views[i][k:], 0
    return done


def as_bytes(out: np.ndarray | torch.Tensor) -> np.ndarray:
    """A flat writable uint8 view of a C-contiguous array or CPU tensor (bf16 included)."""
    if isinstance(out, torch.Tensor):
        if out.device.type != "cpu" or not out.is_contiguous():
            raise ValueError("direct reads need a contiguous CPU tensor")
        return out.reshape(-1).view(torch.uint8).numpy()
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("direct reads need a writable C-contiguous array")
    return out.reshape(-1).view(np.uint8)


def direct_reader(array: zarr.Array, store_path: str = "") -> DirectReader | None:
    """A :class:`DirectReader` for ``array`` if its chunks are raw bytes (with or without
    a trailing crc32c) in local shard files, sharded and chunked along rows only; None
    otherwise (read through zarr). ``store_path`` names the store in messages."""
    if os.environ.get(DIRECT_ENV, "1") == "0":
        return None
    store = array.store_path.store
    meta = array.metadata
    if not isinstance(store, LocalStore) or getattr(meta, "zarr_format", None) != 3:
        return None
    if (
        meta.storage_transformers
        or len(meta.codecs) != 1
        or not isinstance(meta.chunk_grid, RegularChunkGrid)
    ):
        return None
    shard = meta.codecs[0]
    if not isinstance(shard, ShardingCodec):
        return None
    dtype = np.dtype(array.dtype)
    codecs = shard.codecs
    crc = len(codecs) == 2 and isinstance(codecs[1], Crc32cCodec)
    if not _raw_codecs(codecs[:1] if crc else codecs, dtype):
        return None
    if not _index_codecs(shard.index_codecs):
        return None
    shape = tuple(array.shape)
    shard_shape = tuple(meta.chunk_grid.chunk_shape)
    chunk_shape = tuple(shard.chunk_shape)
    if len(shape) < 1 or shard_shape[1:] != shape[1:] or chunk_shape[1:] != shape[1:]:
        return None  # chunked along more than the row axis
    if shard_shape[0] % chunk_shape[0] or dtype.kind not in "biufc":
        return None
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    fill = np.full(int(np.prod(shape[1:], dtype=np.int64)), array.fill_value, dtype=dtype)
    return DirectReader(
        root=Path(store.root) / array.store_path.path,
        shape=shape,
        dtype=dtype,
        chunk_rows=chunk_shape[0],
        shard_rows=shard_shape[0],
        row_bytes=row_bytes,
        index_at_end=shard.index_location == ShardingCodecIndexLocation.end,
        fill_row=fill.tobytes(),
        key=meta,
        store=store_path or str(store.root),
        name=array.path,
        crc=crc,
        verify=os.environ.get(VERIFY_ENV, "1") != "0",
    )


def _raw_codecs(codecs: tuple, dtype: np.dtype) -> bool:
    """Only a bytes codec in native order: chunk bytes are the array's memory."""
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return False
    endian = codecs[0].endian
    return dtype.itemsize == 1 or (endian is not None and endian.value == sys.byteorder)


def _index_codecs(codecs: tuple) -> bool:
    return (
        len(codecs) == 2
        and isinstance(codecs[0], BytesCodec)
        and codecs[0].endian is not None
        and codecs[0].endian.value == "little"
        and isinstance(codecs[1], Crc32cCodec)
    )


def _scratch(nbytes: int) -> memoryview:
    """This thread's scratch for the unwanted rows of checked chunks, grown, never freed:
    a fresh buffer per read (its size varies) left the I/O threads' malloc arenas holding
    tens of MiB of freed, fragmented scratch (peak RSS, not live data)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _SCRATCH.buf = np.empty(nbytes, np.uint8)
    return memoryview(buf)[:nbytes]
