"""The feature store's schema: every array name, dtype, chunking rule and attribute.

Layout of a store (Zarr v3 group)::

    zarr.json                       attrs["losa_cache"]: see ``Manifest`` below
    features/block_007  (N, T, D)   tap ``blocks``: one array per extracted block (0-based
                                    index), float16 | float32 | bfloat16 stored as uint16
                                    bits | int8 codes (attrs["dtype"] says which);
                                    unfinished rows NaN (int8: their scales are NaN)
    embed/z0            (N, T, D)   tap ``embed``: tokens entering block 0
    attn/block_007      (N, T, D)   tap ``attn``: attention branch of a block (after layer
                                    scale, before the residual add)
    mlp/block_007       (N, T, D)   tap ``mlp``: MLP branch of a block
    sum/k_004           (N, T, D)   tap ``sum:4``: z0 + outputs of blocks 1..4 (1-based k)
    <array>_scale       (N, T) float16  int8 stores: one scale per (image, token) row of
                                    each array above (absmax / 127); value = code * scale
    index/source        (N, W) uint8  where each row came from (path, URL, demo://...),
                                    UTF-8, NUL-padded to the longest
    index/status        (N,) uint8  0 pending, 1 ok, 2 skipped (undecodable image/clip)
    index/error         (N, 1024) uint8  why a row was skipped (UTF-8, NUL-padded)
    index/views         (n, V+1) int64  only with ``extract --views V``: the store row
                                    of each view of each clean row (column 0: the row
                                    itself; -1: no views, val/test rows). The V augmented
                                    views of the training rows are ordinary rows after the
                                    n clean ones (source ``<image>#view=v``, in no split)
    splits/<name>       (n,) int64  rows of each split; splits may overlap
    tasks/<name>        (N,) int32  one labelling of the rows (-1 = unlabelled);
                                    attrs: classes, source. A replaced labelling is
                                    written aside as tasks/<name>~<k> and the manifest
                                    switched to it (``Manifest.task_arrays``)
    progress/done       (S,) uint8  one done marker per shard, written last
    progress/checksums  (S, A) uint64  blake2b-64 of each per-shard array, at write time
                                    (attrs["arrays"] names the columns)
    progress/extend_<i>/done, .../checksums   the same for the taps the i-th
                                    ``extract --extend`` added (``Manifest.extensions``)

Rows are written a whole shard at a time (all per-shard arrays share ``shard_rows``),
so a writer owns whole shards and no partial-shard read-modify-write ever happens.

Every chunk ends in a crc32c (the Zarr ``crc32c`` codec, last in the chain), so every
read is checked against what was written: zarr checks its own reads and
:mod:`losa_cache.store.direct` checks the bytes it reads itself. Every array has
``dimension_names`` and only numeric dtypes, so any Zarr v3 client (tensorstore, xarray,
dask, zarr-python) reads every array.

Schema history: 1 had variable-length ``string`` arrays for source and error, zeros as
the fill value and no per-chunk checksums; such stores still open for reading (their
reads are unverified, ``verify`` still checks them) and resume.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from losa_cache.store.errors import StoreError, StoreIntegrityError

SCHEMA_VERSION = 2
#: versions this code reads (1: unverified reads, string index arrays)
READABLE_VERSIONS = (1, 2)
ROOT_ATTR = "losa_cache"
MiB = 1 << 20

FEATURES = "features"
#: tap kind -> the group holding its arrays (``blocks`` keeps schema 1's ``features``)
TAP_GROUPS = {"blocks": FEATURES, "embed": "embed", "attn": "attn", "mlp": "mlp", "sum": "sum"}
#: taps with one array per block chosen by ``--layers``
PER_BLOCK_TAPS = ("blocks", "attn", "mlp")
SCALE_SUFFIX = "_scale"
SOURCE = "index/source"
STATUS = "index/status"
ERROR = "index/error"
VIEWS = "index/views"
SPLITS = "splits"
TASKS = "tasks"
DONE = "progress/done"
CHECKSUMS = "progress/checksums"

PENDING, OK, SKIPPED = 0, 1, 2
#: array attribute: the ``store_id`` of the store that created the array (reads check it,
#: so an array copied in from another store of the same shape is refused, not trained on)
STORE_ID_ATTR = "store"


def stamp(store_id: str | None) -> dict[str, str]:
    """The attributes that mark an array as made by the store ``store_id`` (none for a
    store made before ids: its arrays carry none either)."""
    return {STORE_ID_ATTR: store_id} if store_id else {}


#: names that a store's own files use at any level: never a task, split or tap name
RESERVED_NAMES = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"})


def is_reserved_name(name: str) -> bool:
    """Whether ``name`` collides with a file a Zarr node is made of (its metadata, or
    zarr's write-aside files ``*.<hex>.partial``)."""
    return name in RESERVED_NAMES or name.endswith(".partial")


#: logical dtype -> (zarr storage dtype, bytes per value)
DTYPES: dict[str, tuple[str, int]] = {
    "float16": ("float16", 2),
    "bfloat16": ("uint16", 2),  # zarr has no bf16: raw bits, viewed back as torch.bfloat16
    "float32": ("float32", 4),
    "int8": ("int8", 1),  # symmetric codes; values = code * the row's fp16 scale
}
#: bfloat16 quiet NaN: the fill value of bf16 arrays (uint16 bits), NaN once viewed
BF16_NAN_BITS = 0x7FC0
DTYPE_ALIASES = {
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "float": "float32",
    "i8": "int8",
}

#: Codec names users choose from. Measured on the embedded ViT's real block outputs
#: (fp16, benchmarks/codecs.py, results JSON in benchmarks/results/): blosc-lz4 gains
#: nothing (ratio 1.000) and reads 3x slower than raw; zstd saves 8% (1.08x) at 7x slower
#: reads. Activations are near-incompressible, so the default stores raw bytes, which
#: also lets the trainer read chunks straight from the shard files (store/direct.py).
CODECS: dict[str, Any] = {
    "none": None,
    "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "zstd": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
    "zstd-plain": ZstdCodec(level=3),
}
DEFAULT_CODEC = "none"

FEATURE_DIMS = ("image", "token", "channel")
ERROR_BYTES = 1024  # longer skip reasons are cut (at a character boundary)
#: attribute "encoding" of the text arrays (index/source, index/error)
TEXT_ENCODING = "utf-8, NUL-padded: one string per row"


def checked(codec: str) -> list[Any]:
    """The bytes-to-bytes codecs of a chunk: the chosen compressor, then its crc32c."""
    compressor = CODECS[codec]
    return [*([compressor] if compressor is not None else []), Crc32cCodec()]


def feature_fill(dtype: str) -> float | int:
    """Fill value of feature arrays: NaN (bf16: its bits), which cannot pass for data;
    int8 codes fill with 0 and their scales with NaN, so unwritten rows decode to NaN."""
    if dtype == "int8":
        return 0
    return BF16_NAN_BITS if dtype == "bfloat16" else float("nan")


#: what each tap's arrays hold, for outside readers (array attribute "provenance")
PROVENANCE = {
    "blocks": "output of the block (timm forward_intermediates, prefix tokens first)",
    "embed": "z0: tokens entering block 0 (patch embed, prefix tokens, position embedding, "
    "norm_pre), prefix tokens first",
    "attn": "attention branch of the block: drop_path1(ls1(attn(norm1(x)))), before the "
    "residual add; block output = input + attn + mlp",
    "mlp": "MLP branch of the block: drop_path2(ls2(mlp(norm2(x + attn)))), before the "
    "residual add",
    "sum": "MIST gather G_k = z0 + b_1 + ... + b_k (k 1-based over blocks: 0-based blocks "
    "0..k-1), accumulated in fp32, stored in the store's dtype",
}


def feature_attrs(tap: str, index: int | None, dtype: str) -> dict[str, Any]:
    """Array attributes that tell an outside reader what the stored numbers are."""
    kind = tap_kind(tap)
    attrs: dict[str, Any] = {"tap": tap, "dtype": dtype, "provenance": PROVENANCE[kind]}
    if kind in PER_BLOCK_TAPS:
        attrs["block"] = index
    elif kind == "sum":
        attrs["k"] = index
    if dtype == "bfloat16":
        attrs["stored_as"] = (
            "uint16 bit patterns of bfloat16: view the bits as bfloat16 "
            "(do not convert the integers); 0x7FC0 = NaN = not yet written"
        )
    if dtype == "int8":
        attrs["stored_as"] = (
            "int8 codes q of symmetric quantisation: value = float32(q) * float32(scale), "
            f"scale = the fp16 (image, token) row of the array '<this>{SCALE_SUFFIX}' "
            "(absmax / 127; 0 for an all-zero row; NaN = not yet written)"
        )
    return attrs


def nonfinite_rows(values: np.ndarray, dtype: str) -> np.ndarray:
    """Which rows (axis 0) of stored values hold NaN or inf; ``dtype`` is what they are:
    float16/float32, bfloat16 (uint16 bits: exponent all ones) or int8 (codes: never)."""
    if dtype == "int8" or values.dtype.kind not in "fu":
        return np.zeros(len(values), dtype=bool)
    bits = values.view(np.uint16) if dtype == "bfloat16" else None
    bad = (bits & 0x7F80) == 0x7F80 if bits is not None else ~np.isfinite(values)
    return bad.reshape(len(values), -1).any(axis=1)


def tap_kind(tap: str) -> str:
    """``sum:4`` -> ``sum``; other tap names are their kind."""
    return tap.split(":", 1)[0]


def tap_array(tap: str, block: int | None = None) -> str:
    """Array path of one tap (``block``: 0-based, for ``blocks``/``attn``/``mlp``)."""
    kind = tap_kind(tap)
    if kind == "embed":
        return f"{TAP_GROUPS[kind]}/z0"
    if kind == "sum":
        return f"{TAP_GROUPS[kind]}/k_{int(tap.split(':', 1)[1]):03d}"
    if block is None:
        raise ValueError(f"tap {tap!r} has one array per block: give block=")
    return f"{TAP_GROUPS[kind]}/block_{block:03d}"


def scale_name(array: str) -> str:
    """The int8 scale array of a feature array."""
    return array + SCALE_SUFFIX


def tap_order(tap: str) -> tuple[int, int]:
    """Canonical order of tap names: blocks, embed, attn, mlp, then sum:k by k."""
    kind = tap_kind(tap)
    k = int(tap.split(":", 1)[1]) if kind == "sum" else 0
    return (list(TAP_GROUPS).index(kind), k)


def encode_text(values: Any, width: int) -> np.ndarray:
    """Strings as an (n, width) uint8 matrix of NUL-padded UTF-8 (longer ones are cut
    at a character boundary): a numeric array every Zarr client reads."""
    encoded = [str(v).encode() for v in values]
    encoded = [
        b if len(b) <= width else b[:width].decode(errors="ignore").encode() for b in encoded
    ]
    fixed = np.array(encoded, dtype=f"S{width}") if encoded else np.zeros(0, f"S{width}")
    return fixed.view(np.uint8).reshape(len(encoded), width)


def decode_text(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_text` (str arrays of schema-1 stores pass through)."""
    if values.dtype.kind in "OTU":
        return values
    width = values.shape[-1]
    fixed = np.ascontiguousarray(values, dtype=np.uint8).view(f"S{width}")[..., 0]
    return np.char.decode(fixed, "utf-8")


def text_for(array: Any, values: Any) -> np.ndarray:
    """``values`` in the form ``array`` stores text: a UTF-8 matrix, or str (schema 1)."""
    if np.dtype(array.dtype).kind in "OTU":
        return np.asarray(values, dtype=str)
    return encode_text(values, array.shape[-1])


def text_width(values: Any) -> int:
    """Bytes of the longest string in UTF-8 (at least 1)."""
    return max([1, *(len(str(v).encode()) for v in values)])


def token_layout(
    prefix_tokens: int, grid: tuple[int, int], frames: int = 1, tubelet: int = 1
) -> dict[str, Any]:
    """The manifest's ``token_layout``: T = prefix + frames x grid tokens, prefix first.

    Video tokens are frame-major (all grid positions of token frame 0, then frame 1, ...);
    ``frames`` counts token frames (clip frames / ``tubelet``). An image layout
    (``frames=1``) has no ``tubelet``/``clip_frames`` keys, as stores before video had.
    """
    layout: dict[str, Any] = {
        "prefix_tokens": prefix_tokens,
        "grid": list(grid),
        "frames": frames,
        "tokens": prefix_tokens + frames * grid[0] * grid[1],
        "order": "prefix_first",
    }
    if frames > 1 or tubelet > 1:
        layout |= {"tubelet": tubelet, "clip_frames": frames * tubelet}
    return layout


def feature_name(layer: int) -> str:
    """Array path of block ``layer`` (0-based, as timm indexes blocks)."""
    return tap_array("blocks", layer)


def task_name(name: str) -> str:
    return f"{TASKS}/{name}"


def split_name(name: str) -> str:
    return f"{SPLITS}/{name}"


def parse_dtype(dtype: str) -> str:
    """Normalise a user dtype name; error lists the choices."""
    d = DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if d not in DTYPES:
        raise ValueError(
            f"unknown store dtype {dtype!r}; choose one of {sorted(DTYPES)} (or fp16/bf16/fp32)"
        )
    return d


def parse_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    return codec


@dataclass(frozen=True)
class Layout:
    """Shapes and chunking of one store; derived once, then read back from the attrs."""

    num_images: int
    tokens: int
    dim: int
    layers: tuple[int, ...]
    dtype: str
    chunk_rows: int
    shard_rows: int
    #: tap names the store holds (``store.taps``), canonical order; schema <= 2: blocks
    taps: tuple[str, ...] = ("blocks",)

    @property
    def row_bytes(self) -> int:
        """Bytes of one image in one feature array (int8: codes and the row scales)."""
        scales = self.tokens * 2 if self.dtype == "int8" else 0
        return self.tokens * self.dim * DTYPES[self.dtype][1] + scales

    def tap_arrays(self, taps: tuple[str, ...] | None = None) -> list[tuple[str, str, int | None]]:
        """(array path, tap, block or k) of every feature array of ``taps`` (default: all
        the store's taps), canonical order; int8 scale arrays are not listed."""
        out: list[tuple[str, str, int | None]] = []
        for tap in sorted(self.taps if taps is None else taps, key=tap_order):
            kind = tap_kind(tap)
            if kind in PER_BLOCK_TAPS:
                out += [(tap_array(tap, b), tap, b) for b in self.layers]
            else:
                k = int(tap.split(":", 1)[1]) if kind == "sum" else None
                out.append((tap_array(tap), tap, k))
        return out

    def values_dtype(self, array: str) -> str:
        """What a feature array's stored values are: the store's dtype; int8 scales fp16."""
        return "float16" if self.dtype == "int8" and array.endswith(SCALE_SUFFIX) else self.dtype

    def stored_arrays(self, taps: tuple[str, ...] | None = None) -> list[str]:
        """Every per-shard feature array of ``taps`` (int8: each array, then its scales)."""
        names = [name for name, _, _ in self.tap_arrays(taps)]
        if self.dtype == "int8":
            return [n for name in names for n in (name, scale_name(name))]
        return names

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.num_images)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers), "taps": list(self.taps)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(**{**d, "layers": tuple(d["layers"]), "taps": tuple(d.get("taps", ("blocks",)))})

    def array_spec(self, name: str) -> ArraySpec | None:
        """What the ``zarr.json`` of the per-row array ``name`` must say (None: not one
        the layout fixes). Creation uses the same specs (store/writer.py)."""
        n, t, d = self.num_images, self.tokens, self.dim
        if name == STATUS:
            return ArraySpec((n,), "uint8", (self.shard_rows,))
        if name == ERROR:
            return ArraySpec((n, ERROR_BYTES), "uint8", (self.shard_rows, ERROR_BYTES))
        if name not in self.stored_arrays():
            return None
        if self.dtype == "int8" and name.endswith(SCALE_SUFFIX):
            return ArraySpec((n, t), "float16", (self.chunk_rows, t), (self.shard_rows, t))
        storage = DTYPES[self.dtype][0]
        return ArraySpec((n, t, d), storage, (self.chunk_rows, t, d), (self.shard_rows, t, d))


@dataclass(frozen=True)
class ArraySpec:
    """Shape, storage dtype, chunks and shards an array's ``zarr.json`` must have."""

    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None

    def mismatch(self, array: Any) -> str | None:
        """What ``array``'s metadata says otherwise (None: it agrees)."""
        have = {"shape": tuple(array.shape), "data_type": str(np.dtype(array.dtype)),
                "chunk shape": tuple(array.chunks),
                "shard shape": tuple(array.shards) if array.shards else None}  # fmt: skip
        want = {"shape": self.shape, "data_type": self.dtype, "chunk shape": self.chunks,
                "shard shape": self.shards}  # fmt: skip
        for key, value in want.items():
            if have[key] != value:
                return f"its {key} is {_plain(have[key])} where the manifest says {_plain(value)}"
        return None


def _plain(value: Any) -> str:
    return "none" if value is None else (str(list(value)) if isinstance(value, tuple) else value)


def plan_layout(
    num_images: int,
    tokens: int,
    dim: int,
    layers: tuple[int, ...],
    dtype: str = "float16",
    chunk_mb: float = 2.0,
    shard_mb: float = 64.0,
    buffer_mb: float = 2048.0,
    chunk_rows: int | None = None,
    shard_rows: int | None = None,
    taps: tuple[str, ...] = ("blocks",),
) -> Layout:
    """Choose chunk and shard rows.

    Chunks of ~2 MB read well from disk and object stores; shards (the unit of writing,
    a whole number of chunks) of ~64 MB per layer keep file counts low. The writer holds
    two shards of every layer in memory, so shards shrink until that fits ``buffer_mb``.
    """
    if num_images < 1:
        raise ValueError("a store needs at least one image")
    taps = tuple(sorted(taps, key=tap_order))
    draft = Layout(num_images, tokens, dim, tuple(layers), dtype, 1, 1, taps)
    row_bytes = draft.row_bytes
    arrays = max(1, len(draft.tap_arrays()))
    chunk = chunk_rows or max(1, round(chunk_mb * MiB / row_bytes))
    chunk = min(chunk, num_images)
    if shard_rows is None:
        per_chunk = max(1, int(shard_mb // max(chunk_mb, 1e-9)))
        fit = int(buffer_mb * MiB // (2 * arrays * row_bytes * chunk))
        per_chunk = max(1, min(per_chunk, fit, -(-num_images // chunk)))
        shard_rows = chunk * per_chunk
    if shard_rows % chunk:
        raise ValueError(f"shard rows ({shard_rows}) must be a multiple of chunk rows ({chunk})")
    return Layout(num_images, tokens, dim, tuple(layers), dtype, chunk, shard_rows, taps)


@dataclass
class Manifest:
    """Everything in the root attribute ``losa_cache``.

    ``identity`` is what a resumed run must match exactly (backbone fingerprint without
    the weights' file path, layers, dtype, token layout, preprocessing, rows); the rest
    is description.
    """

    schema_version: int
    layout: dict[str, Any]
    identity: dict[str, Any]
    fingerprint: dict[str, Any]
    token_layout: dict[str, Any]
    codec: str
    extract_config: dict[str, Any]
    versions: dict[str, str]
    splits: list[str]
    tasks: list[str]
    default_task: str
    created: str
    depth: int
    state: str = "created"
    #: task -> its array when not ``tasks/<name>`` (replaced labellings, store/tasks.py)
    task_arrays: dict[str, str] = field(default_factory=dict)
    #: taps added by ``extract --extend``, one entry per run: {"taps": [...]}; their
    #: progress arrays are :func:`extension_progress` (i-th entry)
    extensions: list[dict[str, Any]] = field(default_factory=list)
    #: what ``losa-cache subset`` kept of which store (absent for extracted stores)
    subset: dict[str, Any] | None = None
    #: random id of this store, also in every array's attributes (:data:`STORE_ID_ATTR`);
    #: None for stores made before it was recorded (their arrays are not checked)
    store_id: str | None = None

    def task_path(self, name: str) -> str:
        """The array holding task ``name``'s labels."""
        return self.task_arrays.get(name, task_name(name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> Manifest:
        """The manifest of the store at ``where``, every field checked: a missing or
        mistyped one is a :class:`StoreIntegrityError` naming it (never a KeyError
        later, in whatever reads it)."""
        return parse_manifest(d, where)


# -- reading the manifest back: one validated parse --------------------------------------
def _is_list_of(kind: type) -> Any:
    return lambda v: isinstance(v, list) and all(isinstance(x, kind) for x in v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: field -> (required, check of its value, what it must be)
_MANIFEST_FIELDS: dict[str, tuple[bool, Any, str]] = {
    "schema_version": (True, _is_int, "an integer"),
    "layout": (True, lambda v: isinstance(v, dict), "an object"),
    "identity": (True, lambda v: isinstance(v, dict), "an object"),
    "fingerprint": (True, lambda v: isinstance(v, dict), "an object"),
    "token_layout": (True, lambda v: isinstance(v, dict), "an object"),
    "codec": (True, lambda v: v in CODECS, f"one of {sorted(CODECS)}"),
    "extract_config": (True, lambda v: isinstance(v, dict), "an object"),
    "versions": (True, lambda v: isinstance(v, dict), "an object"),
    "splits": (True, _is_list_of(str), "a list of names"),
    "tasks": (True, _is_list_of(str), "a list of names"),
    "default_task": (True, lambda v: isinstance(v, str), "a task name"),
    "created": (True, lambda v: isinstance(v, str), "a time"),
    "depth": (True, lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "state": (False, lambda v: isinstance(v, str), "a word"),
    "task_arrays": (False, lambda v: isinstance(v, dict), "an object"),
    "extensions": (False, _is_list_of(dict), "a list of objects"),
    "subset": (False, lambda v: v is None or isinstance(v, dict), "an object or null"),
    "store_id": (False, lambda v: v is None or isinstance(v, str), "a string or null"),
}
#: layout key -> (check, what it must be)
_LAYOUT_FIELDS: dict[str, tuple[Any, str]] = {
    "num_images": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "tokens": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "dim": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "layers": (lambda v: _is_list_of(int)(v) and len(set(v)) == len(v), "a list of blocks"),
    "dtype": (lambda v: v in DTYPES, f"one of {sorted(DTYPES)}"),
    "chunk_rows": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "shard_rows": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
}


def manifest_damage(where: str, key: str, problem: str) -> StoreIntegrityError:
    """The one line for a manifest that does not parse: which key, and the fix."""
    store = where or "the store"
    return StoreIntegrityError(
        f"store {store} is damaged: its manifest ({ROOT_ATTR!r} in {store}/zarr.json) has "
        f"{key} {problem}; restore zarr.json from a copy of the store (or an export), or "
        "re-extract into a new path"
    )


def parse_manifest(d: Any, where: str = "") -> Manifest:
    """Check every field of a manifest, then build it (see :meth:`Manifest.from_dict`)."""
    if not isinstance(d, dict):
        raise manifest_damage(where, "no object", f"but {type(d).__name__}")
    version = d.get("schema_version")
    if _is_int(version) and version not in READABLE_VERSIONS:
        raise StoreError(
            f"store schema version {version} is not supported by this losa-cache "
            f"(it reads schemas {list(READABLE_VERSIONS)}); re-extract, or use the "
            "losa-cache version that wrote it"
        )
    unknown = sorted(set(d) - {f.name for f in fields(Manifest)})
    if unknown:
        raise manifest_damage(where, f"key {unknown[0]!r}", "that no losa-cache writes")
    for key, (required, ok, what) in _MANIFEST_FIELDS.items():  # every field has a check
        if key not in d:
            if required:
                raise manifest_damage(where, f"no key {key!r}", f"(it must be {what})")
        elif not ok(d[key]):
            raise manifest_damage(where, f"key {key!r} = {_shown(d[key])}", f"(not {what})")
    m = Manifest(**d)
    _check_layout(m, where)
    _check_tasks(m, where)
    for i, ext in enumerate(m.extensions):
        if not _is_list_of(str)(ext.get("taps")) or not ext["taps"]:
            raise manifest_damage(where, f"extensions[{i}].taps", "that is not a list of taps")
    return m


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_layout(m: Manifest, where: str) -> None:
    lay = m.layout
    for key, (ok, what) in _LAYOUT_FIELDS.items():
        if key not in lay:
            raise manifest_damage(where, f"no layout.{key}", f"(it must be {what})")
        if not ok(lay[key]):
            raise manifest_damage(where, f"layout.{key} = {_shown(lay[key])}", f"(not {what})")
    extra = sorted(set(lay) - {*_LAYOUT_FIELDS, "taps"})
    if extra:
        raise manifest_damage(where, f"layout.{extra[0]}", "that no losa-cache writes")
    if lay["shard_rows"] % lay["chunk_rows"]:
        raise manifest_damage(where, "layout.shard_rows", "that is no multiple of chunk_rows")
    if not all(0 <= b < m.depth for b in lay["layers"]):
        raise manifest_damage(where, f"layout.layers = {_shown(lay['layers'])}",
                              f"(not blocks of a {m.depth}-block backbone)")  # fmt: skip
    taps = lay.get("taps", ["blocks"])
    if not _is_list_of(str)(taps) or not taps or not all(_valid_tap(t, m.depth) for t in taps):
        raise manifest_damage(where, f"layout.taps = {_shown(taps)}",
                              "(not a list of taps: blocks, embed, attn, mlp, sum:K)")  # fmt: skip


def _valid_tap(tap: str, depth: int) -> bool:
    kind, _, k = tap.partition(":")
    if kind not in TAP_GROUPS or (kind == "sum") != bool(k):
        return False
    return kind != "sum" or (k.isdigit() and 1 <= int(k) <= depth)


def _check_tasks(m: Manifest, where: str) -> None:
    if m.default_task not in m.tasks:
        raise manifest_damage(where, f"default_task = {_shown(m.default_task)}",
                              f"(not one of its tasks {m.tasks})")  # fmt: skip
    for name, array in m.task_arrays.items():
        if name not in m.tasks:
            raise manifest_damage(where, f"task_arrays[{name!r}]", "for a task it does not list")
        own = re.fullmatch(rf"{TASKS}/{re.escape(name)}(~[0-9]+)?", str(array))
        if not isinstance(array, str) or own is None:
            raise manifest_damage(where, f"task_arrays[{name!r}] = {_shown(array)}",
                                  f"(not an array {TASKS}/{name}~<k> of that task)")  # fmt: skip


def extension_progress(i: int) -> tuple[str, str]:
    """(done markers, checksums) of the i-th extension's arrays."""
    return f"progress/extend_{i}/done", f"progress/extend_{i}/checksums"


# ------------------------------------------------------------------------------ progress


def per_shard_arrays(layout: Layout, taps: tuple[str, ...] | None = None) -> list[str]:
    """Arrays of the base progress group (``taps``: default all), in checksum column order."""
    return [*layout.stored_arrays(taps), STATUS, ERROR]


@dataclass(frozen=True)
class Progress:
    """Per-shard arrays written together, with their done markers and checksums: the
    extraction's (base, which owns status/error) or one ``extract --extend`` run's."""

    done: str
    checksums: str
    arrays: tuple[str, ...]
    taps: tuple[str, ...]
    base: bool


def progress_groups(layout: Layout, manifest: Manifest) -> list[Progress]:
    """The base group, then one per extension (``Manifest.extensions``)."""
    added = [tuple(e["taps"]) for e in manifest.extensions]
    base = tuple(t for t in layout.taps if not any(t in a for a in added))
    groups = [Progress(DONE, CHECKSUMS, tuple(per_shard_arrays(layout, base)), base, True)]
    for i, taps in enumerate(added):
        done, sums = extension_progress(i)
        groups.append(Progress(done, sums, tuple(layout.stored_arrays(taps)), taps, False))
    return groups


def progress_spec(layout: Layout, manifest: Manifest, name: str) -> ArraySpec | None:
    """The metadata a progress group's done markers or checksums must have (None: ``name``
    is neither)."""
    for g in progress_groups(layout, manifest):
        if name == g.done:
            return ArraySpec((layout.num_shards,), "uint8", (1,))
        if name == g.checksums:
            cols = len(g.arrays)
            return ArraySpec((layout.num_shards, cols), "uint64", (1, cols))
    return None


def group_of(groups: list[Progress], array: str) -> Progress:
    """The progress group an array belongs to (its markers say which rows are written)."""
    return next(g for g in groups if array in g.arrays or array == g.done or array == g.checksums)
