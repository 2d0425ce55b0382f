"""What an extraction depends on (:class:`ExtractConfig`) and how it runs on Dask
(:class:`DaskConfig`): every option declared once, with its help, range, help panel and
how it bears on the stored bits; ``losa-cache extract`` is generated from these fields.

This module imports nothing heavy (no torch, timm, zarr or numpy at import time), so
``losa-cache extract --help`` starts fast; the checks that need the model, data or store
code import it when a config is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any

from losa_cache.checks import BATCH_LIMIT, DEFAULT_MAX_PIXELS, max_workers
from losa_cache.fields import check_fields, option

__all__ = [
    "BACKBONE",
    "CROP_PCT_WHY",
    "IDENTITY_KINDS",
    "INTERPOLATIONS",
    "LAYOUT",
    "MAX_INPUT_SIZE",
    "PRECISION_NAMES",
    "ROWS",
    "RUN",
    "SETTING",
    "DaskConfig",
    "ExtractConfig",
    "identity_fields",
    "parse_precision",
]  # fmt: skip

# -- which settings make up a store's identity -----------------------------------------
#: Every ExtractConfig field declares (metadata "identity") how it bears on the stored
#: bits, once, where it is defined:
#:   SETTING  its resolved value is recorded in identity["settings"]: a resume, an
#:            ``--extend`` or a Dask worker with another value is refused, naming it;
#:   BACKBONE in the backbone's fingerprint (weights hash, preprocessing, video sampling);
#:   ROWS     in the rows' hash (which images, which splits);
#:   LAYOUT   the identity's own keys (layers, taps, dtype), resolved;
#:   RUN      changes where or how fast a run goes, not what it stores.
#: A new field must choose (tests/store/test_extract_identity.py checks every field does);
#: SETTING is the safe choice for anything that changes what is computed.
SETTING, BACKBONE, ROWS, LAYOUT, RUN = "setting", "backbone", "rows", "layout", "run"
IDENTITY_KINDS = (SETTING, BACKBONE, ROWS, LAYOUT, RUN)

#: ``--precision`` spellings -> the name a store records ("auto": bf16 on CUDA, fp32 on CPU).
PRECISION_NAMES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                   "fp16": "fp16", "float16": "fp16"}  # fmt: skip
#: ``--interpolation`` names (timm's resize modes for evaluation transforms).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: Largest ``--input-size``, and why.
MAX_INPUT_SIZE = (4096, "tokens grow with its square, attention with theirs")
CROP_PCT_WHY = "the share of the resized image the centre crop keeps; above 1 it would pad"


def parse_precision(precision: str) -> str:
    if precision != "auto" and precision not in PRECISION_NAMES:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    return precision


def resolved_precision(cfg: ExtractConfig, device: Any) -> str:
    """The compute dtype a run on ``device`` uses, as a store records it (never "auto")."""
    if parse_precision(cfg.precision) == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return PRECISION_NAMES[cfg.precision]


def _opt(default: Any, help: str, identity: str, panel: str | None = None, **rules: Any) -> Any:
    """An :func:`~losa_cache.fields.option` that also says how it bears on the stored bits
    (``identity``, one of :data:`IDENTITY_KINDS`)."""
    if identity not in IDENTITY_KINDS:
        raise ValueError(f"identity kind {identity!r} is not one of {IDENTITY_KINDS}")
    return option(default, help, panel=panel, identity=identity, **rules)


B, D, S_, V, P = "Backbone", "Data", "Store", "Video", "Performance"


@dataclass
class ExtractConfig:
    """Everything an extraction depends on; saved as JSON into the store."""

    # fmt: off
    model: str = _opt(MISSING, "Backbone alias (`losa-cache models`) or timm ViT name.",
                      BACKBONE)
    dataset: str = _opt(
        MISSING,
        "demo | imagefolder:PATH | vtab1k:PATH/TASK | inat2018 | inat2021 | list:FILE"
        " | kinetics:ROOT | videofolder:PATH | framefolder:PATH (video: a vivit_* model)"
        " | wds:PATTERN | hf:PATH (docs/data-and-logging.md). imagefolder:PATH takes "
        "PATH/<class>/*.jpg (all rows in train: add --split val=0.1,test=0.1) or "
        "PATH/train/<class>/*.jpg with val/ and test/ beside train/ (its own splits).", ROWS)
    store: str = _opt(MISSING, "Store path or URL: a new or empty folder, or a store to "
                      "resume.", RUN)
    checkpoint: str | None = _opt(None, "Weights: .npz (big_vision/AugReg), .pth/.bin, "
                                  ".safetensors.", BACKBONE, B)
    pretrained: bool = _opt(False, "timm weights from the local cache.", BACKBONE, B)
    random_init: bool = _opt(False, "Extract from random weights, on purpose.", BACKBONE, B)
    seed: int = _opt(0, "Seed of --random-init.", BACKBONE, B, min=0)
    data_root: str | None = _opt(None, "Root folder of inat data sets.", ROWS, D)
    layers: str = _opt("all", "Blocks to store: all | last:N | evenly:N | 3,6,9 (0-based).",
                       LAYOUT)
    dtype: str = _opt("float16", "Stored dtype: fp16 | bf16 | fp32 | int8 (one fp16 scale per "
                      "token).", LAYOUT)
    taps: str = _opt("blocks", "What to store: blocks, embed (z0), attn, mlp (branches of the "
                     "--layers blocks), sum:K1,K2 (MIST G_k = z0 + first k blocks, k 1-based), "
                     "sum:all, sum:evenly:N; comma-separated.", LAYOUT)
    extend: bool = _opt(False, "Add the --taps a finished store lacks (reruns the backbone, "
                        "writes only the new arrays; every other setting must match).", RUN)
    precision: str = _opt("auto", "Compute dtype: auto (bf16 on CUDA, fp32 on CPU) | fp32 | "
                          "bf16 | fp16.", SETTING, B, resolve=resolved_precision)
    codec: str = _opt("none", "Feature compressor: none | lz4 | zstd | zstd-plain "
                      "(activations barely compress: see benchmarks/codecs.py).", RUN, S_)
    batch_size: int = _opt(64, "Images per forward pass.", RUN, P, min=1, max=BATCH_LIMIT)
    workers: int = _opt(-1, "Image decoding processes (-1: auto).", RUN, P, min=-1,
                        max=max_workers)
    limit: int | None = _opt(None, "At most N images per split (smoke runs).", ROWS, D, min=1)
    splits: list[str] | None = _opt(None, "Only these splits, e.g. train,val.", ROWS, D)  # noqa: RUF009
    split: str | None = _opt(
        None, "Carve held-out splits from train when the data set has none, e.g. "
        "val=0.1,test=0.1 (fractions) or val=50 (a count); stratified by class, seeded "
        "(seed=N, default 0), recorded in the store. A split the data set already has is "
        "refused.", ROWS)
    strict: bool = _opt(False, "Fail on an undecodable image (default: skip).", RUN, D)
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N.", RUN, P)
    chunk_rows: int | None = _opt(None, "Rows per chunk (default: ~2 MB).", RUN, S_, min=1)
    shard_rows: int | None = _opt(None, "Rows per shard (default: ~64 MB).", RUN, S_, min=1)
    input_size: int | None = _opt(None, "Override the backbone's input size (pixels).",
                                  BACKBONE, B, min=1, max=MAX_INPUT_SIZE)
    crop_pct: float | None = _opt(None, "Override the backbone's crop fraction.", BACKBONE, B,
                                  above=0, max=(1.0, CROP_PCT_WHY))
    interpolation: str | None = _opt(None, "Override the resize mode.", BACKBONE, B,
                                     choices=INTERPOLATIONS)
    crop_mode: str | None = _opt(
        None, "center (resize, centre crop) | squash (whole image resized to the input size, "
        "no crop: VTAB-1k's protocol). Default: the backbone's (center).", BACKBONE, B,
        choices=("center", "squash"))
    max_pixels: int = _opt(
        DEFAULT_MAX_PIXELS, f"Largest image decoded, width x height (default: "
        f"{DEFAULT_MAX_PIXELS}, PIL's guard); larger ones are skipped, or stop --strict runs.",
        SETTING, D, min=1)
    max_file_bytes: int | None = _opt(
        None, "Largest file read, e.g. 300MB (default: 256 MiB an image, 4 GiB a video); "
        "larger ones, and anything but a regular file (a FIFO, a device), are skipped, or "
        "stop --strict runs.", SETTING, D, min=1, unit="bytes")
    frames: int | None = _opt(None, "Video: frames per clip (default: the model's, e.g. 32).",
                              BACKBONE, V)
    stride: int = _opt(2, "Video: take every N-th frame.", BACKBONE, V)
    clip: str = _opt("centre", "Video: where the clip sits in the video.", BACKBONE, V,
                     choices=("centre", "start"))
    inflation: str = _opt("central", "Video: tubelet init from the 2D patch kernel.",
                          BACKBONE, V, choices=("central", "average"))
    views: int = _opt(0, "Augmented views of every train* image stored besides the clean one "
                      "(rows after the clean ones; val/test stay clean). Needs --augment.",
                      LAYOUT, "Views")
    augment: str | None = _opt(None, "The views' augmentation: rrc[:LO-HI] and/or flip "
                               "(rrc:0.08-1,flip).", LAYOUT, "Views")
    view_seed: int = _opt(0, "Seed of the views: view v of row r is a function of (seed, r, "
                          "v).", LAYOUT, "Views")
    # fmt: on

    def __post_init__(self) -> None:
        """Refuse bad values before any model or data set is loaded (the CLI prints one line)."""
        from losa_cache.augment import check_views
        from losa_cache.backbone import VIDEO_ALIASES
        from losa_cache.backbone.crop import check_crop_mode
        from losa_cache.backbone.vivit import check_clip, video_alias
        from losa_cache.data.splits import parse_split_spec
        from losa_cache.device import parse_device
        from losa_cache.store import schema
        from losa_cache.store.taps import parse_taps

        check_fields(self)
        check_crop_mode(self.crop_mode, self.crop_pct)
        schema.parse_dtype(self.dtype)
        va = video_alias(self.model)
        check_views(self.views, self.augment, self.view_seed, va is not None)
        if self.split is not None:
            parse_split_spec(self.split)
        parse_taps(self.taps, depth=1 << 20)  # the spelling; k is range-checked on the model
        schema.parse_codec(self.codec)
        parse_precision(self.precision)
        parse_device(self.device)
        if va is None and self.frames is not None:
            raise ValueError(
                f"--frames is for video backbones ({', '.join(VIDEO_ALIASES)}); "
                f"{self.model} is an image model"
            )
        if va is not None:
            check_clip(self.sampling().frames, va.tubelet, self.inflation)

    def sampling(self) -> Any:
        """The clip sampling of a video model (a ClipSampling; None for an image model)."""
        from losa_cache.backbone.vivit import video_alias
        from losa_cache.data.video import ClipSampling

        va = video_alias(self.model)
        return ClipSampling(self.frames or va.frames, self.stride, self.clip) if va else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def identity_fields(kind: str) -> list[dataclasses.Field]:
    """The ExtractConfig fields of one identity kind (SETTING, BACKBONE, ...); a field
    that declares none counts as a SETTING (the safe side: a resume must match it)."""
    fields = dataclasses.fields(ExtractConfig)
    return [f for f in fields if f.metadata.get("identity", SETTING) == kind]


@dataclass
class DaskConfig:
    """Where an extraction runs: this process (both None), or Dask tasks that each compute
    and write whole shards."""

    # fmt: off
    cluster: str | None = option(None, "Run on Dask: local:N (N worker processes) | cuda (one "
                                 "per GPU).", panel="Cluster")
    scheduler: str | None = option(None, "Run on an existing Dask cluster: tcp://HOST:PORT.",
                                   panel="Cluster")
    retries: int = option(3, "Dask: retries of a failing task.", min=0, panel="Cluster")
    shards_per_task: int | None = option(None, "Dask: whole shards per task (default: auto, "
                                         "<= 8).", min=1, panel="Cluster")
    # fmt: on

    def __post_init__(self) -> None:
        check_fields(self)
