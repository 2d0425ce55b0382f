"""``hf:PATH``: Hugging Face datasets kept on disk, never downloaded.

    hf:/data/cifar10                      # a folder saved with Dataset(Dict).save_to_disk
    hf:/data/cifar10/data                 # parquet files (a folder, a file or a glob)
    hf:memory://sets/pets,image-column=img,label-column=fine_label

PATH is local (relative to ``--data-root`` or the cwd) or an fsspec URL. Splits come
from the ``DatasetDict`` (``validation`` is stored as ``val``, as imagefolder: does), or
for parquet from the file's folder or name prefix (``train-00000-of-00004.parquet``,
``test/0000.parquet``; else ``train``). Rows keep the dataset's order, splits ordered
train, val, test, then others.

Options: ``image-column=`` (default: the first ``Image`` feature, else a column named
image or img) and ``label-column=`` (default: the first ``ClassLabel``, else a column
named label or labels; ``none`` for unlabelled rows). A ``ClassLabel``'s names become
the store's class names; other integer labels keep their values, names are sorted.

An image cell may hold encoded bytes (``Image`` feature, binary) or a path (string, or
an ``Image`` with only a path, relative to PATH). A cell that does not decode as an
image is a row that extraction skips with its reason, as a bad image file is.
save_to_disk folders are opened with ``datasets.load_from_disk`` (memory-mapped; a
remote folder is copied by ``datasets`` first); parquet is read in place by row group.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from losa_cache.data.base import DatasetError, DatasetNotFoundError, ImageDecodeError, Sample
from losa_cache.data.packed import (
    SPLIT_ORDER,
    PackedDataset,
    byte_limit,
    check_size,
    decode,
    index_values,
    parse_args,
    require,
    split_name,
    split_order,
)

OPTIONS = ("image-column", "label-column")
USAGE = (
    "hf:PATH  (a datasets save_to_disk folder, or parquet files; options ,image-column=NAME "
    ",label-column=NAME|none; extra [hf])"
)
_IMAGE_NAMES, _LABEL_NAMES = ("image", "img"), ("label", "labels")
_lock = threading.Lock()
_opened: dict[tuple, Any] = {}  # per process: (kind, url, split, column) -> reader


@dataclass(frozen=True)
class Part:
    """A file of rows: a save_to_disk split (``disk``) or a parquet file (``parquet``)."""

    kind: str
    url: str
    key: str  # the DatasetDict key ("" for a plain Dataset and for parquet)
    split: str
    rows: int


@dataclass(repr=False)
class HfDataset(PackedDataset):
    """Rows of a datasets folder or parquet files; row ``i`` is row ``locals[i]`` of part
    ``parts[i]``, its image in column ``column``."""

    column: str = ""
    files: list[Part] = field(default_factory=list)
    parts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    locals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_spec(cls, spec: str, arg: str, data_root: Path | None) -> HfDataset:
        datasets = require("datasets", "hf", "hf: data sets")
        args = parse_args(spec, arg, OPTIONS, named_paths=False)
        if len(args.paths) > 1:
            raise DatasetError(f"{spec!r}: give one PATH (a folder, parquet file or glob)")
        url = _absolute(args.paths[0][1], data_root)
        parts, features, labels_of, root = _open_parts(datasets, url)
        column = _image_column(features, args.options.get("image-column"), spec)
        label_col = _label_column(features, args.options.get("label-column"), spec)
        raw, names = [], None
        for part in parts:
            raw += labels_of(part, label_col) if label_col else [None] * part.rows
        if label_col and type(features[label_col]).__name__ == "ClassLabel":
            names = list(features[label_col].names)
        return cls._build(spec, root, parts, column, label_col, raw, names)

    @classmethod
    def _build(
        cls,
        spec: str,
        root: str,
        parts: list[Part],
        column: str,
        label_col: str | None,
        raw: list[Any],
        names: list[str] | None,
    ) -> HfDataset:
        splits = [split_name(p.split) for p in parts]
        order = split_order(splits)
        rows = [(p, i) for p in sorted(range(len(parts)), key=lambda p: order.index(splits[p]))
                for i in range(parts[p].rows)]  # fmt: skip
        if not rows:
            raise DatasetError(f"{spec!r}: the data set has no rows")
        starts = np.cumsum([0] + [p.rows for p in parts])
        values = [raw[starts[p] + i] for p, i in rows]
        if names is not None:
            labels = [-1 if v is None or v < 0 else int(v) for v in values]
            classes = names
        else:
            labels, classes = index_values(values, f"{spec}: label-column={label_col}")
        numbered: dict[str, int] = {}
        samples = []
        for (p, _), y in zip(rows, labels, strict=True):
            n = numbered[splits[p]] = numbered.get(splits[p], -1) + 1
            samples.append(Sample(f"{splits[p]}/{n}", y, splits[p]))
        blob = json.dumps([[p.kind, p.split, p.rows, _content_id(p)] for p in parts]).encode()
        return cls(
            spec=spec,
            samples=samples,
            classes=list(classes),
            task=root.rstrip("/").split("/")[-1] or "hf",
            meta={
                "fingerprint": {"hf_sha256": hashlib.sha256(blob).hexdigest()},
                "image_column": column,
                "label_column": label_col,
            },
            root=root,
            column=column,
            files=parts,
            parts=np.array([p for p, _ in rows], np.int32),
            locals=np.array([i for _, i in rows], np.int64),
        )

    def row_parts(self) -> np.ndarray:
        return self.parts

    def load(self, index: int) -> Image.Image:
        source = self.samples[index].source
        part = self.files[int(self.parts[index])]
        try:
            value = _cell(part, self.column, int(self.locals[index]))
        except OSError as err:
            raise ImageDecodeError(source, f"cannot read the row ({err})") from err
        data = self._bytes(value, source)
        check_size(len(data), byte_limit(self), source)
        return decode(data, source, self.max_pixels)

    def _bytes(self, value: Any, source: str) -> bytes:
        """The encoded image of a cell: its bytes, or the file its path names."""
        if isinstance(value, dict):  # datasets.Image: {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        if isinstance(value, str) and value:
            return _read_path(value, self.root, source, byte_limit(self))
        what = "empty" if value is None or value == "" else type(value).__name__
        raise ImageDecodeError(source, f"column {self.column!r} holds {what}, not an image")


# -- opening --------------------------------------------------------------------------------
def _absolute(url: str, data_root: Path | None) -> str:
    if "://" in url:
        return url.rstrip("/")
    path = Path(url).expanduser()
    return str(((data_root or Path.cwd()) / path).resolve() if not path.is_absolute() else path)


def _open_parts(datasets: Any, url: str) -> tuple[list[Part], Any, Any, str]:
    """(parts, features, labels_of(part, column), root) of a save_to_disk folder or
    parquet; root: the folder that relative image paths start from."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path) and (fs.exists(f"{path}/dataset_dict.json") or
                           fs.exists(f"{path}/state.json")):  # fmt: skip
        return (*_disk_parts(datasets, url), url)
    files = _parquet_files(fs, path, url)
    root = url if fs.isdir(path) else url.rsplit("/", 1)[0]
    return (*_parquet_parts(datasets, fs, url, path, files), root)


def _disk_parts(datasets: Any, url: str) -> tuple[list[Part], Any, Any]:
    loaded = _load_disk(url)
    is_dict = isinstance(loaded, datasets.DatasetDict)
    items = list(loaded.items()) if is_dict else [("", loaded)]
    if not items:
        raise DatasetError(f"hf:{url}: the DatasetDict has no splits")
    features = items[0][1].features
    parts = [Part("disk", url, key, str(key or d.split or "train"), d.num_rows) for key, d in items]
    by_key = dict(items)

    def labels_of(part: Part, column: str) -> list[Any]:
        return list(by_key[part.key][column])

    return parts, features, labels_of


def _load_disk(url: str) -> Any:
    import datasets

    with _lock:
        key = ("disk", url)
        if key not in _opened:
            _opened[key] = datasets.load_from_disk(url)
        return _opened[key]


def _parquet_files(fs: Any, path: str, url: str) -> list[str]:
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    elif any(ch in path for ch in "*?["):
        files = sorted(fs.glob(path))
    elif fs.exists(path):
        files = [path]
    else:
        raise DatasetNotFoundError(f"hf: nothing at {url} (a save_to_disk folder or parquet)")
    if not files:
        raise DatasetNotFoundError(
            f"hf: {url} holds neither a save_to_disk data set (dataset_dict.json or "
            "state.json) nor .parquet files"
        )
    return files


def _parquet_parts(
    datasets: Any, fs: Any, url: str, path: str, files: list[str]
) -> tuple[list[Part], Any, Any]:
    import pyarrow.parquet as pq

    prefix = url[: len(url) - len(path)] if url.endswith(path) else ""
    base = path if fs.isdir(path) else path.rsplit("/", 1)[0]
    parts, schemas = [], []
    for f in files:
        with fs.open(f, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        parts.append(Part("parquet", prefix + f, "", _parquet_split(f, base), meta.num_rows))
        schemas.append(meta.schema.to_arrow_schema())
    features = datasets.Features.from_arrow_schema(schemas[0])
    for f, schema in zip(files[1:], schemas[1:], strict=True):
        if schema.names != schemas[0].names:
            raise DatasetError(f"hf: {f} has columns {schema.names}, not {schemas[0].names}")

    def labels_of(part: Part, column: str) -> list[Any]:
        with fs.open(part.url, "rb") as fh:
            return pq.read_table(fh, columns=[column]).column(column).to_pylist()

    return parts, features, labels_of


def _parquet_split(file: str, base: str) -> str:
    """A parquet file's split: a split-named folder below PATH, else the file name's
    first word (``validation-00000-of-00001``), else train."""
    rel = file[len(base) :].strip("/").split("/")
    known = (*SPLIT_ORDER, "validation", "valid")
    for folder in rel[:-1]:
        if folder in known:
            return "val" if folder == "valid" else folder
    word = re.split(r"[-_.]", rel[-1], maxsplit=1)[0]
    return ("val" if word == "valid" else word) if word in known else "train"


def _content_id(part: Part) -> Any:
    """What identifies a part's contents: datasets' own fingerprint, or the parquet
    footer's row groups and sizes."""
    if part.kind == "disk":
        return _split_of(_load_disk(part.url), part)._fingerprint
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(part.url, "rb") as fh:
        meta = pq.ParquetFile(fh).metadata
    return [meta.num_rows, meta.serialized_size] + [
        meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)
    ]


def _image_column(features: Any, chosen: str | None, spec: str) -> str:
    names = list(features)
    if chosen:
        if chosen not in features:
            raise DatasetError(f"{spec!r}: no column {chosen!r} (image-column=); columns: {names}")
        kind = _kind(features[chosen])
        if kind not in ("Image", "binary", "large_binary", "string", "large_string"):
            raise DatasetError(
                f"{spec!r}: column {chosen!r} holds {kind}, not images (encoded bytes or "
                f"paths); choose image-column= among {names}"
            )
        return chosen
    found = [n for n in names if _kind(features[n]) == "Image"] or [
        n for n in names if n in _IMAGE_NAMES
    ]
    if not found:
        raise DatasetError(f"{spec!r}: no Image column; pass image-column=NAME (columns: {names})")
    return found[0]


def _label_column(features: Any, chosen: str | None, spec: str) -> str | None:
    names = list(features)
    if chosen == "none":
        return None
    if chosen:
        if chosen not in features:
            raise DatasetError(
                f"{spec!r}: no column {chosen!r} (label-column=); columns: {names}, or "
                "label-column=none"
            )
        return chosen
    found = [n for n in names if _kind(features[n]) == "ClassLabel"] or [
        n for n in names if n in _LABEL_NAMES
    ]
    if not found:
        raise DatasetError(
            f"{spec!r}: no ClassLabel or label column; pass label-column=NAME (columns: "
            f"{names}) or label-column=none"
        )
    return found[0]


def _kind(feature: Any) -> str:
    """``Image``, ``ClassLabel``, or the arrow type of a ``Value`` (``int64``, ``binary``)."""
    name = type(feature).__name__
    return getattr(feature, "dtype", name) if name == "Value" else name


# -- reading rows ---------------------------------------------------------------------------
def _cell(part: Part, column: str, row: int) -> Any:
    """One image cell, through a per-process reader (parquet: one row group held)."""
    with _lock:
        key = (part.kind, part.url, part.key, column)
        reader = _opened.get(key)
        if reader is None:
            reader = _opened[key] = _reader(part, column)
        return reader(row)


def _reader(part: Part, column: str) -> Any:
    if part.kind == "disk":
        import datasets

        loaded = _opened.get(("disk", part.url)) or datasets.load_from_disk(part.url)
        d = _split_of(loaded, part).select_columns([column])
        if type(d.features[column]).__name__ == "Image":
            d = d.cast_column(column, datasets.Image(decode=False))
        return lambda row: d[row][column]
    return _ParquetRows(part.url, column)


class _ParquetRows:
    """Rows of one parquet column, read a row group at a time (rows come in order)."""

    def __init__(self, url: str, column: str) -> None:
        import fsspec
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(fsspec.open(url, "rb").open())
        self.column = column
        counts = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = np.cumsum([0, *counts])
        self.group, self.values = -1, []

    def __call__(self, row: int) -> Any:
        g = int(np.searchsorted(self.starts, row, side="right")) - 1
        if g != self.group:
            table = self.file.read_row_group(g, columns=[self.column])
            self.group, self.values = g, table.column(self.column).to_pylist()
        return self.values[row - int(self.starts[g])]


def _split_of(loaded: Any, part: Part) -> Any:
    """The Dataset of ``part`` in what load_from_disk gave (a DatasetDict or a Dataset)."""
    return loaded[part.key] if part.key else loaded


def _read_path(path: str, root: str, source: str, limit: int | None) -> bytes:
    """The bytes of an image a cell names by path (relative paths: to the data set), at
    most one past ``limit`` (the caller refuses more)."""
    import fsspec

    url = path if "://" in path or path.startswith("/") else f"{root}/{path}"
    if "://" not in url and Path(url).exists() and not Path(url).is_file():
        raise ImageDecodeError(source, f"{url} the row names is not a regular file")
    try:
        with fsspec.open(url, "rb") as f:
            return f.read(-1 if limit is None else limit + 1)
    except FileNotFoundError:
        raise ImageDecodeError(source, f"the image file {url} the row names is missing") from None
    except OSError as err:
        raise ImageDecodeError(source, f"cannot read {url} ({err})") from err
