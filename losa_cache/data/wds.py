"""``wds:PATTERN``: WebDataset tar shards (LAION/DataComp style), indexed once.

    wds:/data/inat-train-{000000..000127}.tar              # one split, "train"
    wds:train=/d/tr-{00..09}.tar,val=/d/va-{00..01}.tar    # splits from the patterns
    wds:s3://bucket/shards-{0000..0099}.tar,split-key=json:split,label-key=json:label

Brace patterns expand as in webdataset; paths are local (relative to ``--data-root`` or
the cwd) or fsspec URLs. Members group into samples by key exactly as webdataset groups
them (``base_plus_ext``: consecutive members sharing the name up to the first dot); a
sample's image is its first member with an image extension (jpg, jpeg, png, webp, ...).

Options: ``label-key=`` ``cls`` (default: a text member holding an integer or a class
name), any other extension, ``EXT:FIELD`` (a field of a JSON member, dotted for nested
objects) or ``none`` (unlabelled); ``split-key=EXT[:FIELD]`` takes each sample's split
from a member instead of from the pattern.

Why an index: the store's guarantees need addressable rows (sorted, resumed by shard, a
Dask task reading only its own tar shards). Every shard's tar headers are read once when
the data set is built, giving each row (shard, byte offset, size); rows are ordered by
(split, shard in pattern order, position in the shard); the index's sha256 goes into the
store's identity, so a resume over changed shards is refused. A sample without an image,
or whose image member the shard cuts short, is a row that extraction skips with its
reason, as a bad image file is; a corrupt header ends its shard's index with a warning.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from losa_cache.data.base import DatasetError, DatasetNotFoundError, ImageDecodeError, Sample
from losa_cache.data.files import IMAGE_EXTENSIONS, is_int
from losa_cache.data.packed import (
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

OPTIONS = ("label-key", "split-key")
USAGE = (
    "wds:PATTERN | wds:train=PATTERN,val=PATTERN  (WebDataset tar shards; options "
    ",label-key=cls|EXT|EXT:FIELD|none ,split-key=EXT[:FIELD]; extra [wds])"
)
#: image extensions in order of preference when a sample holds several
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", *sorted(e[1:] for e in IMAGE_EXTENSIONS))
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: __key__-style members
_OPEN_FILES = 4  # per thread: a task reads its shards in order, so a few suffice
_local = threading.local()


@dataclass(frozen=True)
class MemberKey:
    """Where a per-sample value lives: member extension, and a JSON field (or None)."""

    ext: str
    field: str | None

    @classmethod
    def parse(cls, text: str, option: str) -> MemberKey | None:
        if text.lower() == "none":
            return None
        ext, _, name = text.partition(":")
        if not ext:
            raise DatasetError(f"{option}={text!r}: expected EXT or EXT:FIELD, e.g. json:label")
        return cls(ext.lower(), name or None)

    def __str__(self) -> str:
        return self.ext + (f":{self.field}" if self.field else "")

    def read(self, data: bytes, where: str, option: str) -> int | str:
        """The value in a member's bytes: an integer or a name (JSON field when given)."""
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DatasetError(f"{where}: .{self.ext} is not UTF-8 text") from None
        if self.field is None:
            return int(text) if is_int(text) else text
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: .{self.ext} is not JSON ({e})") from None
        for part in self.field.split("."):
            if not isinstance(value, dict) or part not in value:
                keys = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise DatasetError(
                    f"{where}: .{self.ext} has no field {self.field!r} ({option}={self}); "
                    f"it has {keys}"
                )
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise DatasetError(f"{where}: {option}={self} is {value!r}; expected an int or a name")
        return value


@dataclass(repr=False)
class WdsDataset(PackedDataset):
    """Samples of WebDataset tar shards; row ``i`` is bytes ``offsets[i]:+sizes[i]`` of
    shard ``shards[parts[i]]`` (or, where ``errors`` has it, a row to skip and why)."""

    shards: list[str] = field(default_factory=list)
    parts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    errors: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: str, arg: str, data_root: Path | None) -> WdsDataset:
        require("webdataset", "wds", "wds: data sets")
        args = parse_args(spec, arg, OPTIONS, named_paths=True)
        label_key = MemberKey.parse(args.options.get("label-key", "cls"), "label-key")
        split_key = MemberKey.parse(args.options.get("split-key", "none"), "split-key")
        if split_key is not None and any(name for name, _ in args.paths):
            raise DatasetError(f"{spec!r}: give split names (train=...) or split-key=, not both")
        shards = _expand(args.paths, data_root, spec)
        index = [_index_shard(url, split, label_key, split_key) for url, split in shards]
        return cls._from_index(spec, [url for url, _ in shards], index, label_key)

    @classmethod
    def _from_index(
        cls, spec: str, urls: list[str], index: list[dict], label_key: MemberKey | None
    ) -> WdsDataset:
        found = [(p, s) for p, shard in enumerate(index) for s in shard["samples"]]
        order = split_order([s["split"] for _, s in found])
        found.sort(key=lambda ps: order.index(ps[1]["split"]))  # stable: shard, position
        if not found:
            raise DatasetError(f"{spec!r}: the shards hold no samples")
        root = _common_dir(urls)
        labels, classes = index_values([s["label"] for _, s in found], spec)
        samples = [
            Sample(f"{_relative(urls[p], root)}/{s['member']}", y, s["split"])
            for (p, s), y in zip(found, labels, strict=True)
        ]
        # what the bytes hold, not where they are: moved shards resume into their store
        held = [[_relative(u, root), shard["bytes"], shard["samples"]]
                for u, shard in zip(urls, index, strict=True)]  # fmt: skip
        blob = json.dumps(held, sort_keys=True).encode()
        return cls(
            spec=spec,
            samples=samples,
            classes=classes,
            task=_task_name(urls[0]),
            meta={
                "fingerprint": {"wds_index_sha256": hashlib.sha256(blob).hexdigest()},
                "shards": len(urls),
                "label_key": str(label_key) if label_key else None,
                "shard_errors": [s["error"] for s in index if s["error"]],
            },
            root=root,
            shards=urls,
            parts=np.array([p for p, _ in found], np.int32),
            offsets=np.array([s["offset"] for _, s in found], np.int64),
            sizes=np.array([s["size"] for _, s in found], np.int64),
            errors={i: s["error"] for i, (_, s) in enumerate(found) if s["error"]},
        )

    def row_parts(self) -> np.ndarray:
        return self.parts

    def load(self, index: int) -> Image.Image:
        source = self.samples[index].source
        if index in self.errors:
            raise ImageDecodeError(source, self.errors[index])
        size = int(self.sizes[index])
        check_size(size, byte_limit(self), source)
        try:
            data = read_range(self.shards[self.parts[index]], int(self.offsets[index]), size)
        except OSError as err:
            raise ImageDecodeError(source, f"cannot read the tar member ({err})") from err
        if len(data) < size:
            raise ImageDecodeError(source, f"truncated tar member: {len(data)} of {size} bytes")
        return decode(data, source, self.max_pixels)


# -- shards ---------------------------------------------------------------------------------
def _expand(
    paths: list[tuple[str | None, str]], data_root: Path | None, spec: str
) -> list[tuple[str, str]]:
    """(shard URL, split from the pattern) of every shard, in pattern order."""
    from braceexpand import braceexpand  # webdataset's own dependency

    out: dict[str, str] = {}
    for split, pattern in paths:
        for url in braceexpand(pattern):
            url = _absolute(url, data_root)
            if url in out:
                raise DatasetError(f"{spec!r}: shard {url} is named twice")
            out[url] = split or "train"
    return list(out.items())


def _absolute(url: str, data_root: Path | None) -> str:
    if "://" in url:
        return url
    path = Path(url).expanduser()
    if not path.is_absolute():
        path = (data_root or Path.cwd()) / path
    return str(path.resolve())


def _open(url: str) -> IO[bytes]:
    import fsspec

    return fsspec.open(url, "rb").open()


def read_range(url: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of ``url`` (fewer at its end), through a few open
    files per thread (a task reads its rows in shard order)."""
    files: OrderedDict[str, IO[bytes]] = _local.__dict__.setdefault("files", OrderedDict())
    f = files.pop(url, None) or _open(url)
    files[url] = f
    while len(files) > _OPEN_FILES:
        files.popitem(last=False)[1].close()
    f.seek(offset)
    return f.read(size)


def _index_shard(
    url: str, split: str, label_key: MemberKey | None, split_key: MemberKey | None
) -> dict[str, Any]:
    """One shard's samples: key, image member, byte range, label, split, error."""
    try:
        f = _open(url)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"wds: shard not found: {url}") from None
    except OSError as e:
        raise DatasetError(f"wds: cannot open shard {url}: {e}") from None
    with f:
        size = f.seek(0, 2)
        f.seek(0)
        groups, error = _members(f, url, size)
        samples = [
            _sample(f, url, size, key, members, split, label_key, split_key)
            for key, members in groups
        ]
    if error:
        warnings.warn(error, UserWarning, stacklevel=4)
    return {"url": url, "bytes": size, "samples": samples, "error": error}


def _members(f: IO[bytes], url: str, size: int) -> tuple[list[tuple[str, dict]], str | None]:
    """Samples as (key, {ext: TarInfo}), grouped as webdataset groups them, and what
    ended the shard early (None when it ended cleanly)."""
    from webdataset.tariterators import base_plus_ext

    try:
        tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 (closes nothing: f is the caller's)
    except tarfile.TarError as e:
        raise DatasetError(
            f"wds: {url} is not an uncompressed tar ({e}); rows are read by byte offset, "
            "so decompress .tar.gz shards first"
        ) from None
    groups: list[tuple[str, dict]] = []
    error = None
    try:
        for info in tar:
            name = info.name
            if not info.isreg() or _META.match(name) or ("/" not in name and name[:2] == "__"):
                continue
            key, ext = base_plus_ext(name)
            if key is None:
                continue
            if not groups or groups[-1][0] != key:
                groups.append((key, {}))
            if ext.lower() in groups[-1][1]:
                raise DatasetError(f"wds: {url} holds {name} twice in sample {key!r}")
            groups[-1][1][ext.lower()] = info
    except tarfile.TarError as e:
        if tar.offset < size:
            error = f"wds: {url}: unreadable tar data at byte {tar.offset} ({e})"
    if error is None:
        error = _trailing_garbage(f, url, tar.offset, size)
    return groups, error


def _trailing_garbage(f: IO[bytes], url: str, end: int, size: int) -> str | None:
    """A message when non-zero bytes follow the last header read (a corrupt header stops
    tarfile silently; the rest of the shard cannot be indexed)."""
    if end >= size:
        return None
    f.seek(end)
    if not any(f.read(min(size - end, 1024))):
        return None
    return (
        f"wds: {url}: corrupt tar header at byte {end}; the last {size - end} bytes of the "
        "shard are not indexed (their samples are missing)"
    )


def _sample(
    f: IO[bytes],
    url: str,
    size: int,
    key: str,
    members: dict[str, tarfile.TarInfo],
    split: str,
    label_key: MemberKey | None,
    split_key: MemberKey | None,
) -> dict[str, Any]:
    where = f"wds: {url}: sample {key!r}"
    image = next((members[e] for e in IMAGE_EXTS if e in members), None)
    cut = next((m for m in members.values() if m.offset_data + m.size > size), None)
    error = None
    if image is None:
        error = f"no image member in sample {key!r} (it has {', '.join(sorted(members))})"
    elif cut is not None:
        have = max(0, size - cut.offset_data)
        error = f"truncated tar member {cut.name}: {have} of {cut.size} bytes are in the shard"
    label = _value(f, size, members, label_key, where, "label-key")
    if split_key is not None:
        split = split_name(str(_value(f, size, members, split_key, where, "split-key") or split))
    return {
        "key": key,
        "member": image.name if image is not None else key,
        "offset": image.offset_data if image is not None else 0,
        "size": image.size if image is not None else 0,
        "label": label,
        "split": split,
        "error": error,
    }


def _value(
    f: IO[bytes],
    size: int,
    members: dict[str, tarfile.TarInfo],
    key: MemberKey | None,
    where: str,
    option: str,
) -> int | str | None:
    """The label or split a sample's member holds (None: no key asked for, or a member the
    shard cuts short: that row is skipped anyway)."""
    if key is None:
        return None
    info = members.get(key.ext)
    if info is None:
        raise DatasetError(
            f"{where} has no .{key.ext} member for {option}={key} (it has "
            f"{', '.join(sorted(members))}); choose {option}=EXT[:FIELD]"
            + (" or label-key=none" if option == "label-key" else "")
        )
    if info.offset_data + info.size > size:
        return None
    f.seek(info.offset_data)
    return key.read(f.read(info.size), where, option)


def _common_dir(urls: list[str]) -> str:
    """The longest folder (or URL prefix) holding every shard."""
    parts = [u.split("/")[:-1] for u in urls]
    common = parts[0]
    for p in parts[1:]:
        n = next((i for i, (a, b) in enumerate(zip(common, p, strict=False)) if a != b), None)
        common = common[: min(len(common), len(p)) if n is None else n]
    return "/".join(common) or "/"


def _relative(url: str, root: str) -> str:
    return url[len(root) :].lstrip("/") if url.startswith(root) else url


def _task_name(url: str) -> str:
    """The data set's name: the first shard's folder (``inat/train-000.tar`` -> inat)."""
    return url.rstrip("/").split("/")[-2] or "wds"
