"""Open, create and read feature stores (the Python API everything downstream uses)."""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec, ShardingCodec

from losa_cache.store import schema as S
from losa_cache.store.direct import DirectReader, direct_reader
from losa_cache.store.errors import (
    StoreError,
    StoreIncompleteError,
    StoreIntegrityError,
    array_damage,
    damaged,
)
from losa_cache.store.fs import (  # re-exported: callers import them from here too
    STORAGE_OPTIONS_ENV,
    is_remote,
    local_path,
    open_group,
    parse_storage_options,
    storage_errors,
    storage_options_for,
)

__all__ = [
    "STORAGE_OPTIONS_ENV",
    "FeatureArray",
    "FeatureStore",
    "StoreError",
    "StoreIncompleteError",
    "StoreIntegrityError",
    "is_remote",
    "local_path",
    "open_group",
    "open_store",
    "parse_storage_options",
    "storage_errors",
    "storage_options_for",
]


class UnverifiedStoreWarning(UserWarning):
    """Features are read from a store whose chunks carry no checksums (schema 1)."""


#: logical dtype -> the torch dtype rows are returned in (bf16 bits viewed as bfloat16)
STORAGE_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int8": torch.int8,  # codes; QuantizedArray dequantizes them with their scales
}


@dataclass
class FeatureArray:
    """One block's features, (N, T, D), numpy-sliceable in the store's logical dtype.

    bf16 stores hold raw bits; ``__getitem__`` upcasts them exactly to float32 and
    :meth:`read_torch` returns them as ``torch.bfloat16`` without copying.

    Every read is checked (arrays of a store, i.e. with ``done`` markers): rows of shards
    extraction has not finished raise :class:`StoreIncompleteError` unless
    ``allow_incomplete`` (then they read as the fill value, NaN, without touching their
    files); bytes that fail their crc32c, and missing shard files, raise
    :class:`StoreIntegrityError` naming the shard, the file and the fix.
    """

    array: zarr.Array
    dtype: str
    store: str = ""  # the store's path, for messages
    #: done marker of each shard when the array was opened (None: a bare array, no checks)
    done: np.ndarray | None = None
    allow_incomplete: bool = False
    #: re-reads the done markers (a store being extracted finishes shards meanwhile)
    refresh: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    #: raw shard-file reads when the chunks are uncompressed local bytes (store/direct.py)
    direct: DirectReader | None = field(default=None, init=False, repr=False)
    _present: set[int] = field(default_factory=set, init=False, repr=False)
    _recheck: float = field(default=0.0, init=False, repr=False)  # next refresh, monotonic

    def __post_init__(self) -> None:
        self.direct = direct_reader(self.array, self.store)
        if self.direct is not None:
            self.direct.done = self.done

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def verified(self) -> bool:
        """Whether every chunk carries a crc32c that reads check (schema >= 2)."""
        return has_crc32c(self.array)

    @property
    def shard_rows(self) -> int:
        return (self.array.shards or self.array.chunks)[0]

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sel: Any) -> np.ndarray:
        raw = self.read_torch(sel)
        if self.dtype == "bfloat16":
            return raw.float().numpy()  # exact upcast of the stored bits
        return raw.numpy()

    def read_torch(self, sel: Any) -> torch.Tensor:
        """Rows as a tensor in the storage dtype (bf16 bits viewed, not converted)."""
        rows, rest, single = row_selection(sel, len(self))
        out = torch.empty((len(rows), *self.shape[1:]), dtype=STORAGE_DTYPES[self.dtype])
        self.scatter_rows(rows, out, np.arange(len(rows)))
        if not rest and not single:
            return out
        picked = numpy_view(out)[0 if single else slice(None)][rest]
        picked = torch.from_numpy(np.ascontiguousarray(picked))
        return picked.view(torch.bfloat16) if self.dtype == "bfloat16" else picked

    def read_into(self, lo: int, hi: int, out: torch.Tensor) -> int:
        """Rows ``[lo, hi)`` into ``out`` (storage dtype, shape ``(hi - lo, T, D)``):
        straight from the shard files when the array allows it, else through zarr.
        Returns the bytes read."""
        if tuple(out.shape) != (hi - lo, *self.shape[1:]):
            raise ValueError(f"output of shape {tuple(out.shape)} for rows [{lo}, {hi})")
        return self.scatter_rows(np.arange(lo, hi), out, np.arange(hi - lo))

    def scatter_rows(self, rows: np.ndarray, out: torch.Tensor, slots: np.ndarray) -> int:
        """Row ``rows[i]`` into ``out[slots[i]]`` (``out`` in the storage dtype): the
        shard files' bytes land in their slots directly when the array allows it, else
        the rows' span is read through zarr and copied there. Returns the bytes read."""
        rows, slots = np.asarray(rows, np.int64), np.asarray(slots, np.int64)
        if not len(rows):
            return 0
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"rows out of range for {len(self)} rows")
        pending = self._pending(rows)
        if pending.any():  # allow_incomplete: the fill value, files untouched
            self._fill(out, slots[pending])
            rows, slots = rows[~pending], slots[~pending]
            if not len(rows):
                return 0
        if (
            self.direct is not None
            and out.is_contiguous()
            and out.device.type == "cpu"
            and out.dtype == STORAGE_DTYPES[self.dtype]
            and tuple(out.shape[1:]) == self.shape[1:]
        ):
            return self.direct.scatter_rows(rows, out, slots)
        return self._zarr_scatter(rows, out, slots)

    def _zarr_scatter(self, rows: np.ndarray, out: torch.Tensor, slots: np.ndarray) -> int:
        """Whole chunks through zarr (which checks their crc32c), one read per run."""
        self._check_present(rows)
        order = np.argsort(rows, kind="stable")
        rows, slots = rows[order], slots[order]
        chunk_rows = self.array.chunks[0]
        chunks = rows // chunk_rows
        cuts = np.flatnonzero(np.diff(chunks) > 1) + 1  # runs of consecutive chunks
        got = 0
        for a, b in itertools.pairwise([0, *cuts.tolist(), len(rows)]):
            lo = int(chunks[a]) * chunk_rows
            raw = self._zarr_read(lo, int(rows[b - 1]) + 1)  # whole chunks, once
            if out.device.type == "cpu" and out.is_contiguous():  # numpy: no OpenMP team
                numpy_view(out)[slots[a:b]] = raw[rows[a:b] - lo]
            else:
                src = torch.from_numpy(np.ascontiguousarray(raw[rows[a:b] - lo]))
                src = src.view(torch.bfloat16) if self.dtype == "bfloat16" else src
                out.index_copy_(0, torch.from_numpy(slots[a:b]).to(out.device), src.to(out.device))
            got += raw.nbytes
        return got

    def _zarr_read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` through zarr, in numpy_view's dtype; a chunk that fails its
        check becomes a StoreIntegrityError naming its shard and file."""
        try:
            raw = self.array[lo:hi]
        except (ValueError, RuntimeError) as e:
            settle_zarr_reads()
            raise self._locate(lo, hi, e) from None
        return raw.view(np.int16) if self.dtype == "bfloat16" else raw

    def _locate(self, lo: int, hi: int, error: Exception) -> Exception:
        """The first shard in ``[lo, hi)`` that fails a read on its own, as an integrity
        error; the original error if none does (it was not damage)."""
        sr = self.shard_rows
        for shard in range(lo // sr, (hi - 1) // sr + 1):
            try:
                self.array[max(lo, shard * sr) : min(hi, (shard + 1) * sr)]
            except (ValueError, RuntimeError) as e:
                settle_zarr_reads()
                reason = "checksum mismatch" if "checksum" in str(e) else f"{e}"
                return damaged(
                    self.store, self.array.path, shard, self._file(shard), f"unreadable ({reason})"
                )
        return error

    def _key(self, shard: int) -> str:
        """Storage key of a shard's object, from the store's root."""
        key = self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))
        return f"{self.array.path}/{key}"

    def _file(self, shard: int) -> str:
        return f"{self.store.rstrip('/')}/{self._key(shard)}"

    def _check_present(self, rows: np.ndarray) -> None:
        """Done shards whose file is gone or empty read as the fill value through zarr
        without an error: look once per shard (one stat or HEAD)."""
        if self.done is None:
            return
        from zarr.core.sync import sync

        store = self.array.store_path.store
        for shard in np.unique(rows // self.shard_rows).tolist():
            if shard in self._present or not self.done[shard]:
                continue
            try:
                size = sync(store.getsize(self._key(shard)))
            except FileNotFoundError:
                size = -1
            if size <= 0:
                why = "its file is missing or empty but the shard is marked done"
                raise damaged(self.store, self.array.path, shard, self._file(shard), why)
            self._present.add(shard)

    def _pending(self, rows: np.ndarray) -> np.ndarray:
        """Which ``rows`` lie in shards not yet done; raises unless allow_incomplete."""
        if self.done is None:
            return np.zeros(len(rows), dtype=bool)
        shards = rows // self.shard_rows
        pending = ~self.done[shards]
        if pending.any() and self.refresh is not None and time.monotonic() > self._recheck:
            self._recheck = time.monotonic() + 1.0  # at most once a second
            self.done = self.refresh()  # finished meanwhile?
            if self.direct is not None:
                self.direct.done = self.done
            pending = ~self.done[shards]
        if pending.any() and not self.allow_incomplete:
            raise StoreIncompleteError(
                f"{int(pending.sum())} of the {len(rows)} rows asked for (e.g. row "
                f"{int(rows[pending][0])}) are in shards extraction has not finished "
                f"({int(self.done.sum())}/{len(self.done)} shards done) in store {self.store}:"
                " rerun the `losa-cache extract` command that wrote it to finish it, or pass"
                " allow_incomplete=True (CLI: --allow-incomplete) to read them as "
                f"{fill_name(self.array)}"
            )
        return pending

    def _fill(self, out: torch.Tensor, slots: np.ndarray) -> None:
        fill = np.array(self.array.fill_value, dtype=np.dtype(self.array.dtype))
        if self.dtype == "bfloat16":
            fill = fill.view(np.int16)
        if out.device.type == "cpu" and out.is_contiguous():
            numpy_view(out)[slots] = fill
        else:
            value = torch.from_numpy(np.atleast_1d(fill)).view(out.dtype)
            out[torch.from_numpy(slots).to(out.device)] = value.to(out.device)

    def advise(self, lo: int, hi: int) -> None:
        """Hint that rows ``[lo, hi)`` will be read soon (direct arrays; else nothing)."""
        if self.direct is not None:
            self.direct.advise(lo, hi)


@dataclass
class QuantizedArray:
    """An int8 array with its per-(image, token) fp16 scales, read as float32 values.

    Indexing returns ``dequantize(codes, scales)`` = float32(q) * float32(s), exactly;
    :meth:`raw` returns the stored codes and scales of the same rows, and ``codes`` /
    ``scales`` are the two checked arrays themselves (e.g. for zero-copy batch reads, then
    :func:`losa_cache.store.quant.dequantize`).
    """

    codes: FeatureArray
    scales: FeatureArray
    dtype: str = "int8"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    @property
    def verified(self) -> bool:
        return self.codes.verified and self.scales.verified

    def __len__(self) -> int:
        return len(self.codes)

    def raw(self, sel: Any) -> tuple[np.ndarray, np.ndarray]:
        """(int8 codes (n, T, D), fp16 scales (n, T)) of rows ``sel`` (rows only)."""
        rows, rest, single = row_selection(sel, len(self))
        if rest:
            raise IndexError("raw() selects rows only; index the result further")
        q, s = self.codes.read_torch(rows).numpy(), self.scales.read_torch(rows).numpy()
        return (q[0], s[0]) if single else (q, s)

    def read_torch(self, sel: Any) -> torch.Tensor:
        """Rows as float32 values (dequantized)."""
        return torch.from_numpy(np.ascontiguousarray(self[sel]))

    def __getitem__(self, sel: Any) -> np.ndarray:
        from losa_cache.store.quant import dequantize

        rows, rest, single = row_selection(sel, len(self))
        q, s = self.raw(rows)
        values = dequantize(q, s)
        return values[0 if single else slice(None)][rest] if (rest or single) else values


def row_selection(sel: Any, n: int) -> tuple[np.ndarray, tuple, bool]:
    """A numpy-style selection as (rows along axis 0, the selection of the other axes,
    whether the row axis is dropped: an integer)."""
    rest: tuple = ()
    if isinstance(sel, tuple):
        sel, rest = (sel[0], sel[1:]) if sel else (slice(None), ())
    if sel is Ellipsis:
        sel, rest = slice(None), (Ellipsis, *rest) if rest else ()
    if isinstance(sel, slice):
        return np.arange(n)[sel], rest, False
    if isinstance(sel, (int, np.integer)):
        i = int(sel) + (n if int(sel) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"row {int(sel)} out of range for {n} rows")
        return np.array([i]), rest, True
    rows = np.asarray(sel)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise IndexError(f"boolean row mask of shape {rows.shape} for {n} rows")
        return np.flatnonzero(rows), rest, False
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise IndexError(f"rows must be an int, a slice, or a 1-D int/bool array; got {sel!r}")
    rows = rows.astype(np.int64)
    rows = np.where(rows < 0, rows + n, rows)
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"rows out of range for {n} rows")
    return rows, rest, False


def every_chunk(array: zarr.Array) -> zarr.Array:
    """``array`` set to store every chunk it is given, fill values too: zarr leaves a
    chunk (and a shard) that equals the fill value unwritten, and a done shard without
    its file reads as damaged. Every write of a store goes through this."""
    return array.with_config({"write_empty_chunks": True})


def has_crc32c(array: zarr.Array) -> bool:
    """Whether the array's chunks end in a crc32c (inside its shards, if sharded)."""
    codecs = array.metadata.codecs
    if codecs and isinstance(codecs[0], ShardingCodec):
        codecs = codecs[0].codecs
    return any(isinstance(c, Crc32cCodec) for c in codecs)


def fill_name(array: zarr.Array) -> str:
    """How unwritten values read: NaN, or the fill value itself."""
    fill = np.array(array.fill_value, dtype=np.dtype(array.dtype))
    if fill.dtype == np.uint16 and int(fill) == S.BF16_NAN_BITS:
        return "NaN"
    return "NaN" if fill.dtype.kind == "f" and np.isnan(fill) else f"{fill.item()!r}"


def settle_zarr_reads() -> None:
    """Wait for the reads zarr still runs after one of them failed (a failed gather leaves
    its siblings pending: at exit, asyncio prints "Task was destroyed but it is pending")
    and collect their errors, so a damaged store ends in one clean message."""
    import asyncio

    from zarr.core.sync import sync

    async def settle() -> None:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        if others:
            done, _ = await asyncio.wait(others, timeout=60)
            for task in done:
                if not task.cancelled():
                    task.exception()

    sync(settle())


class FeatureStore:
    """A read view of a store: layers, rows, splits, tasks, features, progress."""

    def __init__(self, group: zarr.Group, path: str, allow_incomplete: bool = False) -> None:
        self.group = group
        self.path = path
        #: read rows of unfinished shards (as NaN) instead of raising StoreIncompleteError
        self.allow_incomplete = allow_incomplete
        self._done: dict[str, np.ndarray] = {}  # done markers as features() last saw them
        self._warned = False
        self._checked: dict[str, zarr.Array] = {}  # arrays opened and checked
        attrs = group.attrs.asdict()
        if S.ROOT_ATTR not in attrs:
            raise StoreError(
                f"{path} is a Zarr group but not a losa-cache store (no '{S.ROOT_ATTR}' attribute)"
            )
        self.manifest = S.Manifest.from_dict(attrs[S.ROOT_ATTR], path)
        self.layout = S.Layout.from_dict(self.manifest.layout)

    # -- the arrays, each checked against the manifest when opened ------------------------
    def array(self, name: str) -> zarr.Array:
        """The store's array ``name``, once its metadata agrees with the manifest (shape,
        data type, chunks, shards) and it belongs to this store; else a
        :class:`StoreIntegrityError` naming the array and the fix."""
        if name not in self._checked:
            arr, problem = self.open_array(name)
            if problem is not None:
                raise array_damage(self.path, name, problem, self.array_fix(name))
            self._checked[name] = arr
        return self._checked[name]

    def open_array(self, name: str) -> tuple[zarr.Array | None, str | None]:
        """(the array, None) if ``name`` is sound, else (what opened or None, the problem)."""
        try:
            arr = self.group[name]
        except KeyError:
            return None, "it is missing"
        except (ValueError, TypeError) as e:  # zarr.json that does not parse
            return None, f"its metadata does not parse ({type(e).__name__}: {e})"
        if not isinstance(arr, zarr.Array):
            return None, "it is a group, not an array"
        return arr, self.array_problem(name, arr)

    def array_problem(self, name: str, arr: zarr.Array) -> str | None:
        """What is wrong with ``arr`` as this store's array ``name`` (None: nothing)."""
        spec = self.array_spec(name)
        if spec is not None:
            problem = spec.mismatch(arr)
            if problem is not None:
                return problem
        elif self._per_row(name) and arr.shape[:1] != (self.num_images,):
            return f"it has {arr.shape[0] if arr.shape else 0} rows, the store {self.num_images}"
        if name.startswith(S.TASKS + "/"):
            classes = arr.attrs.get("classes")
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                return "its attribute 'classes' is not a list of class names"
        own = self.manifest.store_id
        if own is not None and arr.attrs.get(S.STORE_ID_ATTR) != own:
            theirs = arr.attrs.get(S.STORE_ID_ATTR)
            where = f"another store (id {theirs})" if theirs else "no store"
            return f"it belongs to {where}, not to this one (id {own}): it was copied in"
        return None

    def _per_row(self, name: str) -> bool:
        """Arrays with one entry per store row (whatever else their shape)."""
        return name in (S.SOURCE, S.STATUS, S.ERROR) or name.startswith(S.TASKS + "/")

    def array_spec(self, name: str) -> S.ArraySpec | None:
        """What ``name``'s metadata must say; schema-1 stores: their feature arrays only."""
        spec = self.layout.array_spec(name)
        if spec is None:
            spec = S.progress_spec(self.layout, self.manifest, name)
        if self.manifest.schema_version < 2 and name not in self.layout.stored_arrays():
            return None
        return spec

    def array_fix(self, name: str) -> str | None:
        """How to mend a damaged array: per-shard ones are rewritten by repair + extract
        (None: that default); the others were written once, at creation."""
        if self.layout.array_spec(name) is not None or name.startswith("progress/"):
            return None
        if name.startswith(S.TASKS + "/"):
            return ("add the labelling again with `losa-cache tasks add --overwrite`, or restore "
                    "the store from a copy")  # fmt: skip
        return "restore the store from a copy (or an export), or re-extract into a new path"

    def array_names(self, per_shard: bool | None = None) -> list[str]:
        """Every array the manifest implies (``per_shard``: only those extraction rewrites
        shard by shard, or only the others: source, splits, tasks)."""
        shards = [*self.feature_arrays(), S.STATUS, S.ERROR]
        for g in S.progress_groups(self.layout, self.manifest):
            shards += [g.done, g.checksums]
        once = [S.SOURCE, *(S.split_name(s) for s in self.manifest.splits),
                *(self.manifest.task_path(t) for t in self.manifest.tasks)]  # fmt: skip
        names = shards if per_shard else once if per_shard is False else [*shards, *once]
        return list(dict.fromkeys(names))

    def check_arrays(self, per_shard: bool | None = None) -> None:
        """Open and check every array (see :meth:`array_names`); the first damage found
        is raised as one line naming the array and the fix."""
        for name in self.array_names(per_shard):
            self.array(name)

    # -- description ---------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Blocks whose outputs the store holds (tap ``blocks``; [] without it)."""
        return list(self.layout.layers) if "blocks" in self.layout.taps else []

    @property
    def num_images(self) -> int:
        return self.layout.num_images

    @property
    def depth(self) -> int:
        return self.manifest.depth

    @property
    def dtype(self) -> str:
        return self.layout.dtype

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.manifest.fingerprint)

    @property
    def token_layout(self) -> dict[str, Any]:
        return dict(self.manifest.token_layout)

    # -- rows ------------------------------------------------------------------------
    @property
    def splits(self) -> dict[str, np.ndarray]:
        return {name: self.array(S.split_name(name))[:] for name in self.manifest.splits}

    def split_rows(self, split: str, valid_only: bool = True) -> np.ndarray:
        """Rows of ``split`` (sorted), by default without skipped/unwritten rows."""
        if split not in self.manifest.splits:
            raise StoreError(f"unknown split {split!r}; this store has {self.manifest.splits}")
        rows = np.sort(self.array(S.split_name(split))[:])
        return rows[self.valid[rows]] if valid_only else rows

    @property
    def status(self) -> np.ndarray:
        return self.array(S.STATUS)[:]

    @property
    def valid(self) -> np.ndarray:
        """True for rows whose features were written from a decoded image."""
        return self.status == S.OK

    @property
    def sources(self) -> np.ndarray:
        """(N,) str: where each row came from."""
        return S.decode_text(self.array(S.SOURCE)[:])

    def skipped(self) -> list[dict[str, Any]]:
        """Rows whose image could not be decoded, with the reason."""
        rows = np.flatnonzero(self.status == S.SKIPPED)
        if not len(rows):
            return []
        src = S.decode_text(self.array(S.SOURCE).oindex[rows])
        err = S.decode_text(self.array(S.ERROR).oindex[rows])
        return [
            {"row": int(r), "source": str(s), "error": str(e)}
            for r, s, e in zip(rows, src, err, strict=True)
        ]

    # -- labels ----------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self.manifest.tasks)

    @property
    def default_task(self) -> str:
        return self.manifest.default_task

    def _task(self, task: str | None) -> zarr.Array:
        task = task or self.default_task
        if task not in self.manifest.tasks:
            raise StoreError(
                f"unknown task {task!r}; this store has {self.manifest.tasks} "
                "(add one with `losa-cache tasks add`)"
            )
        return self.array(self.manifest.task_path(task))

    def labels(self, task: str | None = None) -> np.ndarray:
        """(N,) int labels of a task; -1 where a row has no label."""
        return self._task(task)[:]

    def classes(self, task: str | None = None) -> list[str]:
        return list(self._task(task).attrs["classes"])

    # -- features --------------------------------------------------------------------
    @property
    def taps(self) -> list[str]:
        """What the store holds, e.g. ["blocks", "embed", "attn", "mlp", "sum:4"]."""
        return list(self.layout.taps)

    def features(self, layer: int) -> FeatureArray | QuantizedArray:
        """Block ``layer`` (0-based; negative counts from the end of the backbone)."""
        return self.tap_features("blocks", layer)

    def tap_features(self, name: str, block: int | None = None) -> FeatureArray | QuantizedArray:
        """One tap's (N, T, D) features, read and checked as :meth:`features` reads blocks.

        ``block`` (0-based, negative from the end) for the per-block taps blocks/attn/mlp.
        int8 stores return a :class:`QuantizedArray`: values dequantized to float32,
        codes and scales through its ``codes``/``scales`` arrays and ``raw()``.
        """
        name = name.strip().lower()
        if name not in self.layout.taps:
            raise StoreError(
                f"tap {name!r} is not in this store; it holds {self.taps} (add taps with "
                "`losa-cache extract ... --extend --taps ...`)"
            )
        if S.tap_kind(name) in S.PER_BLOCK_TAPS:
            if block is None:
                raise StoreError(f"tap {name!r} has one array per block: pass block=")
            index = block + self.depth if block < 0 else block
            if index not in self.layout.layers:
                raise StoreError(
                    f"block {block} is not in this store; it holds blocks {self.layers} of "
                    f"{self.depth} (re-extract with --layers to include it)"
                )
            path = S.tap_array(name, index)
        elif block is not None:
            raise StoreError(f"tap {name!r} has one array, not one per block: drop block=")
        else:
            path = S.tap_array(name)
        if self.dtype == "int8":
            array: FeatureArray | QuantizedArray = QuantizedArray(
                self._array(path, "int8"), self._array(S.scale_name(path), "float16")
            )
        else:
            array = self._array(path, self.dtype)
        if not array.verified and not self._warned:
            self._warned = True
            warnings.warn(self.unverified_note, UnverifiedStoreWarning, stacklevel=2)
        return array

    def torch_dataset(
        self,
        keys: Any,
        split: str = "train",
        task: str | None = None,
        storage_options: dict | None = None,
    ) -> Any:
        """``split``'s rows as a map-style torch Dataset of (features, label) that DataLoader
        workers can use (:class:`losa_cache.store.torch_dataset.StoreDataset`)."""
        from losa_cache.store.torch_dataset import StoreDataset

        return StoreDataset(self, keys, split, task, storage_options, open_store)

    def _array(self, path: str, dtype: str) -> FeatureArray:
        done = self._group_of(path).done
        return FeatureArray(
            self.array(path),
            dtype,
            self.path,
            self._done_markers(done),
            self.allow_incomplete,
            lambda: self._refresh_done(done),
        )

    def _group_of(self, path: str) -> S.Progress:
        return S.group_of(S.progress_groups(self.layout, self.manifest), path)

    def feature_arrays(self) -> list[str]:
        """Paths of every per-shard feature array (int8: codes and scales)."""
        return self.layout.stored_arrays()

    @property
    def verified_reads(self) -> bool:
        """Whether reads check every chunk against a crc32c written with it (schema >= 2)."""
        return all(has_crc32c(self.array(a)) for a in self.feature_arrays())

    @property
    def unverified_note(self) -> str:
        return (
            f"store {self.path} was written without per-chunk checksums (schema "
            f"{self.manifest.schema_version}): damaged chunks are not detected on read; "
            f"`losa-cache verify {self.path}` checks it, or re-extract to a new path"
        )

    def _done_markers(self, done: str = S.DONE) -> np.ndarray:
        if done not in self._done:
            self._done[done] = self.done_shards(done)
        return self._done[done]

    def _refresh_done(self, done: str = S.DONE) -> np.ndarray:
        self._done[done] = self.done_shards(done)
        return self._done[done]

    # -- progress and size -----------------------------------------------------------
    def done_shards(self, done: str = S.DONE) -> np.ndarray:
        """Done markers of the extraction (``done``: an extension's markers)."""
        return self.array(done)[:].astype(bool)

    @property
    def complete(self) -> bool:
        return bool(self.done_shards().all())

    def require_complete(self, hint: str = "") -> None:
        """Raise StoreIncompleteError unless every shard is done (``hint``: another way out)."""
        done = self.done_shards()
        if not done.all():
            raise StoreIncompleteError(
                f"store {self.path} is incomplete ({int(done.sum())}/{len(done)} shards "
                "extracted): rerun the same `losa-cache extract` command to resume"
                + (f", {hint}" if hint else "")
            )

    def nbytes(self) -> dict[str, int]:
        """Logical vs stored bytes of the feature arrays."""
        logical = stored = 0
        for name in self.feature_arrays():
            arr = self.array(name)
            logical += arr.nbytes
            stored += _stored_bytes(arr)
        return {"logical": logical, "stored": stored}


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (bf16 as its int16 bits): numpy copies run on the
    calling thread with the GIL released, where torch ops would start an OpenMP team."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _stored_bytes(arr: zarr.Array) -> int:
    try:
        return int(arr.nbytes_stored())
    except Exception:  # some remote stores cannot list sizes
        return -1


def open_store(
    path: str | Path, storage_options: dict | None = None, allow_incomplete: bool = False
) -> FeatureStore:
    """Open an existing store for reading (local path or fsspec URL).

    Reading rows of shards that extraction has not finished raises
    :class:`StoreIncompleteError` unless ``allow_incomplete`` (they then read as NaN).
    """
    try:
        group = open_group(path, mode="r", storage_options=storage_options)
    except (
        FileNotFoundError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ) as e:
        raise StoreError(
            f"no losa-cache store at {path}: create one with `losa-cache extract`"
        ) from e
    return FeatureStore(group, str(path), allow_incomplete)


def write_task(
    group: zarr.Group,
    name: str,
    labels: np.ndarray,
    classes: Sequence[str],
    source: str,
    array: str | None = None,
    store_id: str | None = None,
) -> None:
    """Write one task array (whole, by one writer: labels are small) at ``array``
    (default ``tasks/<name>``; store/tasks.py writes replacements aside), stamped with
    the store's id (``store_id``, default: the one in the group's manifest)."""
    if store_id is None:
        store_id = group.attrs.get(S.ROOT_ATTR, {}).get("store_id")
    arr = group.create_array(
        array or S.task_name(name),
        shape=labels.shape,
        dtype="int32",
        chunks=(max(1, len(labels)),),
        fill_value=-1,
        overwrite=True,
        compressors=S.checked("none"),
        dimension_names=("image",),
    )
    every_chunk(arr)[:] = labels
    attrs = {"classes": list(classes), "source": source}
    arr.attrs.update(attrs | S.stamp(store_id))
