"""Run a frozen backbone once over a data set and write its taps to a store.

Taps (``--taps``, store/taps.py) are block outputs, z0, attention/MLP branches and MIST
prefix sums, all from one forward pass (losa_cache/forward.py). ``--extend`` adds taps to
a finished store: the backbone runs again and only the new arrays are written, with
their own done markers (resumable the same way).

Batches never cross a shard boundary, so every shard is computed from the same
batches whether a run is fresh or resumed: a resumed store equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from losa_cache._callable import make_callable
from losa_cache.augment import ViewPlan
from losa_cache.backbone import VIDEO_ALIASES, Backbone, create_backbone
from losa_cache.backbone.crop import crop_preprocess
from losa_cache.backbone.vivit import video_alias
from losa_cache.data import get_dataset
from losa_cache.data.base import ImageDataset, ImageDecodeError
from losa_cache.data.splits import carve_splits
from losa_cache.data.torch_dataset import TorchImages, decoding_workers, worker_context
from losa_cache.data.video import VideoRows
from losa_cache.data.view_images import ViewImages
from losa_cache.device import pick_device
from losa_cache.extract_config import (  # noqa: F401  (re-exported: the config's old home)
    BACKBONE,
    CROP_PCT_WHY,
    IDENTITY_KINDS,
    INTERPOLATIONS,
    LAYOUT,
    MAX_INPUT_SIZE,
    PRECISION_NAMES,
    ROWS,
    RUN,
    SETTING,
    DaskConfig,
    ExtractConfig,
    identity_fields,
    parse_precision,
    resolved_precision,
)
from losa_cache.side.layers import parse_layers
from losa_cache.store import schema as S
from losa_cache.store.quant import quantize
from losa_cache.store.store import storage_errors
from losa_cache.store.taps import deepest_block, parse_taps, tap_names
from losa_cache.store.target import inspect_target
from losa_cache.store.views import write_view_table
from losa_cache.store.writer import (
    NonFiniteError,
    Progress,
    ShardWriter,
    create_store,
    now,
    open_for_resume,
    progress_groups,
    readable_rows,
    store_lock,
)
from losa_cache.versions import versions

#: how to go on after a store write failed (disk full): nothing finished is lost
RESUME = "rerun the same command to resume: finished shards are kept"


#: ``--precision`` names -> compute dtypes ("auto": bf16 on CUDA, fp32 on CPU).
PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    if parse_precision(precision) == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return PRECISIONS[precision]


#: compute dtype -> the name a store records (the resolved ``--precision``, never "auto")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolved_settings(cfg: ExtractConfig, device: torch.device) -> dict[str, Any]:
    """``identity["settings"]``: the resolved value of every SETTING field (precision as
    the compute dtype this run uses, never "auto")."""
    out = {}
    for f in identity_fields(SETTING):
        resolve = f.metadata.get("resolve")
        out[f.name] = resolve(cfg, device) if resolve else getattr(cfg, f.name)
    return out


def assumed_settings(cfg: ExtractConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """What a store that does not record a SETTING (made before it was recorded) was
    extracted with: that field's default. Where this run uses the default, its own
    resolved value is assumed; otherwise a value that differs, so the resume is refused."""
    out = {}
    for f in identity_fields(SETTING):
        default = f.default
        same = getattr(cfg, f.name) == default
        out[f.name] = settings[f.name] if same else f"not recorded (the default, {default!r})"
    return out


def recorded_config(cfg: ExtractConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``extract_config``: the options with every SETTING resolved."""
    return {**cfg.to_dict(), **settings}


@dataclass
class ExtractResult:
    """What a run did (printed as the summary, or as JSON)."""

    store: str
    num_images: int
    written: int
    skipped: list[dict[str, Any]]
    shards_written: int
    shards_total: int
    resumed: bool
    seconds: float
    images_per_s: float
    bytes_written: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def select_rows(
    dataset: ImageDataset, limit: int | None, splits: list[str] | None, carve: str | None = None
) -> tuple[list[int], dict[str, list[int]]]:
    """Rows to extract (dataset order) and each split's rows renumbered into the store
    (``carve``: ``--split``, held-out splits taken from train first)."""
    by_split = dataset.split_indices()
    if carve is not None:
        by_split = carve_splits(by_split, dataset.table.labels, carve)
    if splits:
        unknown = sorted(set(splits) - set(by_split))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; the data set has {list(by_split)}")
        by_split = {k: v for k, v in by_split.items() if k in splits}
    if limit is not None:
        by_split = {k: v[:limit] for k, v in by_split.items()}
    rows = sorted({r for v in by_split.values() for r in v})
    new = {r: i for i, r in enumerate(rows)}
    return rows, {k: [new[r] for r in v] for k, v in by_split.items()}


def build_identity(
    backbone: Backbone,
    layers: tuple[int, ...],
    dtype: str,
    sources: list[str],
    splits: dict[str, list[int]],
    taps: tuple[str, ...] = ("blocks",),
    *,
    settings: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What must match for a run to resume into an existing store (``settings``: see
    :func:`resolved_settings`; ``data``: what the data set says identifies its bytes, e.g.
    a tar index's hash; absent for files)."""
    import hashlib

    fp = {k: v for k, v in backbone.fingerprint().items() if k != "weights_source"}
    rows = hashlib.sha256("\n".join(sources).encode()).hexdigest()
    split_hash = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    return {
        "backbone": fp,
        "layers": list(layers),
        "taps": list(taps),
        "dtype": dtype,
        "token_layout": backbone.token_layout(),
        "rows": {"count": len(sources), "sources_sha256": rows, "splits_sha256": split_hash},
        **({"data": data} if data else {}),
        **({"settings": settings} if settings is not None else {}),
    }


def prepare(
    cfg: ExtractConfig, device: torch.device, dataset: ImageDataset | None = None
) -> tuple[Backbone, ImageDataset, list[int], dict[str, list[int]], tuple[int, ...]]:
    """Load data set and backbone, choose rows and layers (no store I/O yet); ``dataset``:
    one built already from ``cfg`` (a Dask worker gets the client's indexed tar shards)."""
    if dataset is None:
        dataset = get_dataset(
            cfg.dataset,
            data_root=cfg.data_root,
            max_pixels=cfg.max_pixels,
            sampling=cfg.sampling(),
            max_file_bytes=cfg.max_file_bytes,
        )
    if isinstance(dataset, VideoRows) and video_alias(cfg.model) is None:
        raise ValueError(
            f"{cfg.dataset} holds videos but {cfg.model} is an image model: pick a video "
            f"backbone ({', '.join(VIDEO_ALIASES)})"
        )
    rows, splits = select_rows(dataset, cfg.limit, cfg.splits, cfg.split)
    if not rows:
        raise ValueError(f"data set {cfg.dataset} has no rows to extract")
    views = view_plan(cfg, splits)
    if views is not None:  # the views' rows follow the clean ones (augment.ViewPlan)
        rows = rows + [rows[r] for r in views.view_rows()[0]]
    size = (3, cfg.input_size, cfg.input_size) if cfg.input_size else None
    backbone = create_backbone(
        cfg.model,
        checkpoint=cfg.checkpoint,
        pretrained=cfg.pretrained,
        random_init=cfg.random_init,
        seed=cfg.seed,
        device=device,
        preprocess={
            "input_size": size,
            "interpolation": cfg.interpolation,
            **crop_preprocess(cfg.crop_mode, cfg.crop_pct),
        },
        frames=cfg.frames,
        inflation=cfg.inflation,
    )
    if backbone.video:
        backbone.sampling = {"stride": cfg.stride, "clip": cfg.clip}
    layers = parse_layers(cfg.layers, backbone.depth)
    return backbone, dataset, rows, splits, layers


def view_plan(cfg: ExtractConfig, splits: dict[str, list[int]]) -> ViewPlan | None:
    """Where ``--views`` puts its rows (None without views)."""
    return ViewPlan.of(splits, cfg.views, cfg.augment, cfg.view_seed)


def store_taps(spec: str, depth: int) -> tuple[str, ...]:
    """Tap names of a ``--taps`` spec, canonical order (blocks, embed, attn, mlp, sum:k)."""
    return tuple(tap_names(parse_taps(spec, depth)))


def new_manifest(
    cfg: ExtractConfig,
    backbone: Backbone,
    layout: S.Layout,
    identity: dict,
    splits: dict[str, list[int]],
    task: str,
) -> S.Manifest:
    return S.Manifest(
        schema_version=S.SCHEMA_VERSION,
        layout=layout.to_dict(),
        identity=identity,
        fingerprint=backbone.fingerprint(),
        token_layout=backbone.token_layout(),
        codec=cfg.codec,
        extract_config=recorded_config(cfg, identity["settings"]),
        versions=versions(),
        splits=list(splits),
        tasks=[task],
        default_task=task,
        created=now(),
        depth=backbone.depth,
    )


def open_or_create(
    cfg: ExtractConfig,
    backbone: Backbone,
    dataset: ImageDataset,
    rows: list[int],
    splits: dict[str, list[int]],
    layers: tuple[int, ...],
    storage_options: dict | None = None,
    device: torch.device | None = None,
):
    """Resume a matching store, or create a new one; returns (group, layout, resumed).
    ``device``: where the features are computed (resolves ``--precision auto``)."""
    dtype = S.parse_dtype(cfg.dtype)
    S.parse_codec(cfg.codec)
    views = view_plan(cfg, splits)
    sources = [dataset.samples[r].source for r in rows]
    if views is not None:
        sources = views.sources(sources[: views.n_clean])
    taps = store_taps(cfg.taps, backbone.depth)
    settings = resolved_settings(cfg, device or pick_device(cfg.device))
    data = dataset.meta.get("fingerprint")
    identity = build_identity(
        backbone, layers, dtype, sources, splits, taps, settings=settings, data=data
    )
    if views is not None:
        identity["views"] = views.identity()
    assumed = assumed_settings(cfg, settings)
    if cfg.extend:
        from losa_cache.store.extend import extend_store

        store = extend_store(cfg.store, identity, storage_options, assumed)
        return store.group, store.layout, True
    existing = open_for_resume(cfg.store, identity, storage_options, assumed)
    if existing is not None:
        if views is not None:
            write_view_table(existing.group, views.table())
        return existing.group, existing.layout, True
    layout = S.plan_layout(
        len(rows),
        backbone.tokens,
        backbone.dim,
        layers,
        dtype,
        chunk_rows=cfg.chunk_rows,
        shard_rows=cfg.shard_rows,
        taps=taps,
    )
    labels = dataset.table.labels[np.asarray(rows, dtype=np.int64)].astype(np.int32)
    task = dataset.task or "default"
    manifest = new_manifest(cfg, backbone, layout, identity, splits, task)
    group = create_store(
        cfg.store,
        layout,
        manifest,
        sources,
        splits,
        {task: (labels, list(dataset.classes))},
        storage_options=storage_options,
    )
    if views is not None:
        write_view_table(group, views.table())
    return group, layout, False


def shard_needs(group: Any, groups: list[Progress]) -> dict[int, list[Progress]]:
    """Shard -> the progress groups it still needs written (those not marked done)."""
    needs: dict[int, list[Progress]] = {}
    for g in groups:  # an unreadable marker reads as not done: its shard is rewritten
        for shard in np.flatnonzero(~readable_rows(group[g.done])[0].astype(bool)).tolist():
            needs.setdefault(int(shard), []).append(g)
    return needs


def shard_batches(layout: S.Layout, shards: list[int], batch_size: int) -> list[list[int]]:
    """Store rows in batches that never straddle two shards."""
    out = []
    for shard in shards:
        start, stop = layout.shard_range(shard)
        out += [list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)]
    return out


def make_loader(
    dataset: ImageDataset,
    backbone: Backbone,
    rows: list[int],
    batches: list[list[int]],
    workers: int,
    device: torch.device,
    views: ViewPlan | None = None,
) -> torch.utils.data.DataLoader:
    images: TorchImages
    if views is None:
        images = TorchImages(dataset, backbone.transform(), rows)
    else:  # row k: the clean image, or view v of clean row r
        clean, view = views.items()
        images = ViewImages(dataset, backbone.transform(), rows, view, clean, views.spec,
                            backbone.preprocess, views.seed)  # fmt: skip
    workers = decoding_workers(workers)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {
            "multiprocessing_context": worker_context(),
            "prefetch_factor": 4,
            "persistent_workers": False,
        }
    return torch.utils.data.DataLoader(
        images,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        **kwargs,
    )


class ShardBuffer:
    """Host memory for one shard of the arrays of ``groups``, filled batch by batch."""

    def __init__(self, layout: S.Layout, shard: int, groups: list[Progress]) -> None:
        self.shard = shard
        self.groups = groups
        self.taps = tuple(t for g in groups for t in g.taps)
        self.start, stop = layout.shard_range(shard)
        n = stop - self.start
        storage = S.DTYPES[layout.dtype][0]
        self.features: dict[str, np.ndarray] = {}
        for name, _, _ in layout.tap_arrays(self.taps):
            self.features[name] = np.empty((n, layout.tokens, layout.dim), dtype=storage)
            if layout.dtype == "int8":
                self.features[S.scale_name(name)] = np.empty((n, layout.tokens), np.float16)
        self.status = np.full(n, S.PENDING, dtype=np.uint8)
        self.errors = np.full(n, "", dtype=object)
        self.filled = 0

    @property
    def full(self) -> bool:
        return self.filled == len(self.status)


def progress_bar(total: int, enabled: bool) -> tqdm:
    """The extraction bar (images, img/s, ETA), shared by in-process and Dask runs."""
    return tqdm(
        total=total,
        unit="img",
        desc="extract",
        disable=not enabled or total == 0,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Cast block outputs to the stored dtype (bf16 kept bit-exact as uint16)."""
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return x.to(getattr(torch, dtype)).cpu().numpy()


def compute_taps(
    backbone: Backbone, x: torch.Tensor, layout: S.Layout, taps: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """{array path: (B, T, D)} of ``taps``: block outputs alone through the backbone's
    ``intermediates`` (timm forward_intermediates), anything else through
    :func:`losa_cache.forward.forward_taps` (the same pass, written out)."""
    if set(taps) == {"blocks"}:
        outs = backbone.intermediates(x, list(layout.layers))
        return {S.feature_name(b): o for b, o in zip(layout.layers, outs, strict=True)}
    from losa_cache.forward import check_branches, forward_taps, supports_taps

    if not supports_taps(backbone.model):
        raise ValueError(
            f"{backbone.name} is not a timm VisionTransformer: only --taps blocks is supported"
        )
    if {"attn", "mlp"} & set(taps):
        check_branches(backbone.model, layout.layers)
    return forward_taps(backbone.model, x, layout.layers, taps)


def put_outputs(buf: ShardBuffer, outs: dict[str, torch.Tensor], lo: int, dtype: str) -> None:
    """Store a batch's outputs in the shard buffer (int8: codes and row scales)."""
    for name, out in outs.items():
        hi = lo + len(out)
        if dtype == "int8":
            codes, scales = quantize(out)
            buf.features[name][lo:hi] = codes.cpu().numpy()
            buf.features[S.scale_name(name)][lo:hi] = scales.cpu().numpy()
        else:
            buf.features[name][lo:hi] = to_storage(out, dtype)


def tap_label(layout: S.Layout, name: str) -> str:
    """``features/block_007`` as "features/block_007 (tap blocks, block 7)"."""
    for array, tap, index in layout.tap_arrays():
        if array == name:
            where = f", block {index}" if S.tap_kind(tap) in S.PER_BLOCK_TAPS else ""
            return f"{name} (tap {tap}{where})"
    return name


def check_finite(
    outs: dict[str, torch.Tensor],
    buf: ShardBuffer,
    lo: int,
    layout: S.Layout,
    store_rows: list[int],
    sources: list[str],
    amp: torch.dtype,
) -> None:
    """Stop on NaN or inf, naming the tap, the rows and how many: before the cast, the
    backbone's own (compute dtype or weights); after it, the store dtype's range."""
    for name, out in outs.items():
        finite = torch.isfinite(out).flatten(1)
        bad = (~finite.all(dim=1)).cpu().numpy()
        why = ""
        if bad.any():
            values = int((~finite).sum())
            why = f"the backbone produced {values} NaN/inf value(s) in"
            fix = "check the backbone's weights (NaN in them?)"
            if amp != torch.float32:
                fix = f"it computed in {DTYPE_NAMES[amp]}: rerun with --precision fp32"
        else:
            stored = {n: v[lo : lo + len(out)] for n, v in buf.features.items()
                      if n in (name, S.scale_name(name))}  # fmt: skip
            for n, v in stored.items():
                bad |= S.nonfinite_rows(v, layout.values_dtype(n))
            if bad.any():
                why = f"values beyond the range of the store's {S.DTYPES[layout.dtype][0]} in"
                fix = "store them with --dtype bf16 or fp32"
        if why:
            rows = [store_rows[i] for i in np.flatnonzero(bad).tolist()]
            shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
            raise NonFiniteError(
                f"{why} {tap_label(layout, name)} for {len(rows)} of this batch's "
                f"{len(store_rows)} image(s) (store rows {shown}; first: {sources[rows[0]]}); "
                f"nothing of them is stored: {fix}; finished shards are kept"
            )


def prune_for(backbone: Backbone, layout: S.Layout) -> None:
    """Drop the blocks after the deepest one any of the store's taps needs."""
    deepest = deepest_block(parse_taps(list(layout.taps), backbone.depth), layout.layers)
    backbone.prune([max(0, deepest)])


def run_batches(
    loader,
    batches: list[list[int]],
    backbone: Backbone,
    layout: S.Layout,
    device: torch.device,
    amp: torch.dtype,
    strict: bool,
    sources: list[str],
    log,
    needs: dict[int, list[Progress]] | None = None,
) -> Iterator[tuple[ShardBuffer | None, int]]:
    """Forward every batch; yield (the shard buffer once full, else None, batch size).

    ``batches`` holds the store rows of each batch, in the loader's (preserved) order;
    ``needs`` the progress groups each shard still needs (default: the base group).
    """
    buf: ShardBuffer | None = None
    base = [Progress(S.DONE, S.CHECKSUMS, (), layout.taps, True)]
    for (x, _rows, ok, errors), store_rows in zip(loader, batches, strict=True):
        first = store_rows[0]
        if buf is None or buf.full:
            shard = first // layout.shard_rows
            buf = ShardBuffer(layout, shard, needs[shard] if needs else base)
        ok = ok.bool()
        if strict and not ok.all():
            bad = int(torch.nonzero(~ok)[0])
            raise ImageDecodeError(
                sources[store_rows[bad]],
                f"{errors[bad]} (--strict: stopping; finished shards are kept, "
                "fix or remove the file and rerun to resume)",
            )
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            outs = compute_taps(backbone, x, layout, buf.taps)
        lo = first - buf.start
        hi = lo + len(store_rows)
        put_outputs(buf, outs, lo, layout.dtype)
        check_finite(outs, buf, lo, layout, store_rows, sources, amp)
        buf.status[lo:hi] = np.where(ok.numpy(), S.OK, S.SKIPPED)
        for i in torch.nonzero(~ok).flatten().tolist():
            buf.errors[lo + i] = errors[i]
            log(f"skipped: {errors[i]}")
        buf.filled += len(store_rows)
        yield (buf if buf.full else None), len(store_rows)


def extract(
    cfg: ExtractConfig, progress: bool = True, storage_options: dict | None = None
) -> ExtractResult:
    """Extract (or resume extracting) ``cfg.dataset`` into ``cfg.store`` in this process.

    ``storage_options`` (fsspec) are for store URLs; they are never saved into the store.
    For a Dask cluster see :func:`losa_cache.distributed.extract_distributed`.
    """
    device = pick_device(cfg.device)
    amp = compute_dtype(cfg.precision, device)
    with storage_errors(cfg.store, RESUME):
        inspect_target(cfg.store, storage_options)  # refuse a bad path before loading
    backbone, dataset, rows, splits, layers = prepare(cfg, device)
    with storage_errors(cfg.store, RESUME), store_lock(cfg.store, storage_options) as lock:
        group, layout, resumed = open_or_create(
            cfg, backbone, dataset, rows, splits, layers, storage_options, device
        )
        manifest = S.Manifest.from_dict(group.attrs[S.ROOT_ATTR])
        groups = progress_groups(layout, manifest)
        needs = shard_needs(group, groups)
        todo = sorted(needs)
        prune_for(backbone, layout)
        batches = shard_batches(layout, todo, cfg.batch_size)
        total = sum(len(b) for b in batches)
        writer = ShardWriter(group, layout, groups=groups)
        finished = layout.num_shards - len(todo)
        t0 = time.perf_counter()
        bar = progress_bar(total, progress)
        submitted = 0
        try:
            loader = make_loader(
                dataset, backbone, rows, batches, cfg.workers, device, view_plan(cfg, splits)
            )
            sources = [dataset.samples[r].source for r in rows]
            log = bar.write if progress else lambda _m: None
            for buf, n in run_batches(
                loader, batches, backbone, layout, device, amp, cfg.strict, sources, log, needs
            ):
                bar.update(n)
                if buf is not None:
                    lock.check()
                    writer.submit(
                        buf.shard, buf.features, buf.status, buf.errors.astype(str), buf.groups
                    )
                    submitted += 1
                    bar.set_postfix(shards=f"{finished + submitted}/{layout.num_shards}")
        finally:
            bar.close()
            writer.close()
        seconds = time.perf_counter() - t0
    from losa_cache.store import open_store

    store = open_store(cfg.store, storage_options)
    return ExtractResult(
        store=cfg.store,
        num_images=layout.num_images,
        written=total,
        skipped=store.skipped(),
        shards_written=len(todo),
        shards_total=layout.num_shards,
        resumed=resumed,
        seconds=round(seconds, 3),
        images_per_s=round(total / seconds, 2) if seconds else 0.0,
        bytes_written=writer.bytes_written,
    )


make_callable(__name__)  # losa_cache.extract(...): losa_cache/api.py
