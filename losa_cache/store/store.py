"""Open, create and read feature stores (the Python API everything downstream uses)."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from losa_cache.store import schema as S
from losa_cache.store.direct import DirectReader, direct_reader


class StoreError(ValueError):
    """A store is missing, incomplete, damaged or not what the caller asked for."""


#: logical dtype -> the torch dtype rows are returned in (bf16 bits viewed as bfloat16)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class FeatureArray:
    """One block's features, (N, T, D), numpy-sliceable in the store's logical dtype.

    bf16 stores hold raw bits; ``__getitem__`` upcasts them exactly to float32 and
    :meth:`read_torch` returns them as ``torch.bfloat16`` without copying.
    """

    array: zarr.Array
    dtype: str
    #: raw shard-file reads when the chunks are uncompressed local bytes (store/direct.py)
    direct: DirectReader | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.direct = direct_reader(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sel: Any) -> np.ndarray:
        if self.dtype == "bfloat16":
            return self.read_torch(sel).float().numpy()  # exact upcast of the stored bits
        return self.array[sel]

    def read_torch(self, sel: Any) -> torch.Tensor:
        """Rows as a tensor in the storage dtype (bf16 bits viewed, not converted)."""
        raw = torch.from_numpy(np.ascontiguousarray(self.array[sel]))
        return raw.view(torch.bfloat16) if self.dtype == "bfloat16" else raw

    def read_into(self, lo: int, hi: int, out: torch.Tensor) -> int:
        """Rows ``[lo, hi)`` into ``out`` (contiguous, storage dtype): straight from the
        shard files when the array allows it, else through zarr. Returns the bytes read."""
        if (
            self.direct is not None
            and out.is_contiguous()
            and out.device.type == "cpu"
            and out.dtype == STORAGE_DTYPES[self.dtype]
            and tuple(out.shape) == (hi - lo, *self.shape[1:])
        ):
            return self.direct.read_into(lo, hi, out)
        raw = self.read_torch(slice(lo, hi))
        out.copy_(raw)
        return raw.numel() * raw.element_size()

    def scatter_rows(self, rows: np.ndarray, out: torch.Tensor, slots: np.ndarray) -> int:
        """Row ``rows[i]`` into ``out[slots[i]]`` (``out`` contiguous, storage dtype): the
        shard files' bytes land in their slots directly when the array allows it, else
        the rows' span is read through zarr and copied there. Returns the bytes read."""
        if (
            self.direct is not None
            and out.is_contiguous()
            and out.device.type == "cpu"
            and out.dtype == STORAGE_DTYPES[self.dtype]
            and tuple(out.shape[1:]) == self.shape[1:]
        ):
            return self.direct.scatter_rows(rows, out, slots)
        rows, slots = np.asarray(rows, np.int64), np.asarray(slots, np.int64)
        order = np.argsort(rows, kind="stable")
        rows, slots = rows[order], slots[order]
        chunk_rows = self.array.chunks[0]
        chunks = rows // chunk_rows
        cuts = np.flatnonzero(np.diff(chunks) > 1) + 1  # runs of consecutive chunks
        got = 0
        for a, b in itertools.pairwise([0, *cuts.tolist(), len(rows)]):
            lo = int(chunks[a]) * chunk_rows
            raw = self.read_torch(slice(lo, int(rows[b - 1]) + 1))  # whole chunks, once
            if out.device.type == "cpu" and out.is_contiguous():  # numpy: no OpenMP team
                numpy_view(out)[slots[a:b]] = numpy_view(raw)[rows[a:b] - lo]
            else:
                out.index_copy_(0, torch.from_numpy(slots[a:b]).to(out.device),
                                raw[torch.from_numpy(rows[a:b] - lo)].to(out.device))
            got += raw.numel() * raw.element_size()
        return got

    def advise(self, lo: int, hi: int) -> None:
        """Hint that rows ``[lo, hi)`` will be read soon (direct arrays; else nothing)."""
        if self.direct is not None:
            self.direct.advise(lo, hi)


class FeatureStore:
    """A read view of a store: layers, rows, splits, tasks, features, progress."""

    def __init__(self, group: zarr.Group, path: str) -> None:
        self.group = group
        self.path = path
        attrs = group.attrs.asdict()
        if S.ROOT_ATTR not in attrs:
            raise StoreError(
                f"{path} is a Zarr group but not a losa-cache store (no '{S.ROOT_ATTR}' attribute)"
            )
        self.manifest = S.Manifest.from_dict(attrs[S.ROOT_ATTR])
        self.layout = S.Layout.from_dict(self.manifest.layout)

    # -- description ---------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.layout.layers)

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
        return {name: self.group[S.split_name(name)][:] for name in self.manifest.splits}

    def split_rows(self, split: str, valid_only: bool = True) -> np.ndarray:
        """Rows of ``split`` (sorted), by default without skipped/unwritten rows."""
        if split not in self.manifest.splits:
            raise StoreError(f"unknown split {split!r}; this store has {self.manifest.splits}")
        rows = np.sort(self.group[S.split_name(split)][:])
        return rows[self.valid[rows]] if valid_only else rows

    @property
    def status(self) -> np.ndarray:
        return self.group[S.STATUS][:]

    @property
    def valid(self) -> np.ndarray:
        """True for rows whose features were written from a decoded image."""
        return self.status == S.OK

    @property
    def sources(self) -> np.ndarray:
        return self.group[S.SOURCE][:]

    def skipped(self) -> list[dict[str, Any]]:
        """Rows whose image could not be decoded, with the reason."""
        rows = np.flatnonzero(self.status == S.SKIPPED)
        if not len(rows):
            return []
        src, err = self.group[S.SOURCE], self.group[S.ERROR]
        return [{"row": int(r), "source": str(src[r]), "error": str(err[r])} for r in rows]

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
        return self.group[self.manifest.task_path(task)]

    def labels(self, task: str | None = None) -> np.ndarray:
        """(N,) int labels of a task; -1 where a row has no label."""
        return self._task(task)[:]

    def classes(self, task: str | None = None) -> list[str]:
        return list(self._task(task).attrs["classes"])

    # -- features --------------------------------------------------------------------
    def features(self, layer: int) -> FeatureArray:
        """Block ``layer`` (0-based; negative counts from the end of the backbone)."""
        block = layer + self.depth if layer < 0 else layer
        if block not in self.layout.layers:
            raise StoreError(
                f"block {layer} is not in this store; it holds blocks {self.layers} of "
                f"{self.depth} (re-extract with --layers to include it)"
            )
        return FeatureArray(self.group[S.feature_name(block)], self.dtype)

    # -- progress and size -----------------------------------------------------------
    def done_shards(self) -> np.ndarray:
        return self.group[S.DONE][:].astype(bool)

    @property
    def complete(self) -> bool:
        return bool(self.done_shards().all())

    def require_complete(self) -> None:
        done = self.done_shards()
        if not done.all():
            raise StoreError(
                f"store {self.path} is incomplete ({int(done.sum())}/{len(done)} shards "
                "extracted): rerun the same `losa-cache extract` command to resume"
            )

    def nbytes(self) -> dict[str, int]:
        """Logical vs stored bytes of the feature arrays."""
        logical = stored = 0
        for layer in self.layers:
            arr = self.group[S.feature_name(layer)]
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


#: JSON fsspec storage options used for store URLs when none are passed (e.g. an S3
#: endpoint), so training, sweeps and every command reach the same store without flags.
STORAGE_OPTIONS_ENV = "LOSA_CACHE_STORAGE_OPTIONS"


def is_remote(path: str | Path) -> bool:
    """True for fsspec URLs other than ``file://`` (those have no local lock or path)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | Path) -> str:
    """``file://`` URLs as plain paths: zarr's LocalStore writes atomically, fsspec's does not."""
    return str(path).removeprefix("file://")


def storage_options_for(path: str | Path, storage_options: dict | None = None) -> dict | None:
    """The options to open ``path`` with: the given ones, else $LOSA_CACHE_STORAGE_OPTIONS."""
    if not is_remote(path):
        return None
    if storage_options is not None:
        return storage_options
    return parse_storage_options(os.environ.get(STORAGE_OPTIONS_ENV), STORAGE_OPTIONS_ENV)


def parse_storage_options(text: str | None, where: str = "--storage-options") -> dict | None:
    """A JSON object of fsspec options (None for empty); the error names the bad input."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f'{where} must be a JSON object, e.g. {{"endpoint_url": "http://..."}}')
    return value


def open_group(
    path: str | Path, mode: str = "r", storage_options: dict | None = None
) -> zarr.Group:
    """Open a Zarr group from a local path or an fsspec URL."""
    options = storage_options_for(path, storage_options)
    kwargs = {"storage_options": options} if options else {}
    return zarr.open_group(local_path(path), mode=mode, **kwargs)


def open_store(path: str | Path, storage_options: dict | None = None) -> FeatureStore:
    """Open an existing store for reading (local path or fsspec URL)."""
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
    return FeatureStore(group, str(path))


def write_task(
    group: zarr.Group,
    name: str,
    labels: np.ndarray,
    classes: Sequence[str],
    source: str,
    array: str | None = None,
) -> None:
    """Write one task array (whole, by one writer: labels are small) at ``array``
    (default ``tasks/<name>``; store/tasks.py writes replacements aside)."""
    arr = group.create_array(
        array or S.task_name(name),
        shape=labels.shape,
        dtype="int32",
        chunks=(max(1, len(labels)),),
        fill_value=-1,
        overwrite=True,
    )
    arr[:] = labels
    arr.attrs.update({"classes": list(classes), "source": source})
