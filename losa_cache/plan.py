"""Say what an extraction and its training will cost before anything runs.

Store bytes follow from the token layout and the taps alone (``losa_cache.store.taps``);
backbone compute is counted from the architecture (``losa_cache.compute``); the time estimate
divides it by a matmul throughput measured on the detected device, times an efficiency
factor, and says so. :func:`plan_budget` lists what fits on a disk.

Compute is reported as **GMACs** (multiply-accumulates, what the LoSA paper's tables call
"GFLOPs": ViT-g/14 at 224 px 267.4, ViT-B/16 17.6) and as **GFLOPs = 2 x GMACs**; every
key and label names which one it is.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

import losa_cache.baselines  # noqa: F401  (registers the live baselines)
from losa_cache.backbone import create_backbone  # noqa: F401  (registers our architectures)
from losa_cache.backbone.registry import create_architecture
from losa_cache.backbone.vivit import VIDEO_ALIASES, check_clip, video_alias
from losa_cache.checks import parse_size
from losa_cache.compute import backbone_cost, measure_matmul_flops
from losa_cache.data import KNOWN_SIZES, dataset_sizes
from losa_cache.data.registry import ADAPTERS
from losa_cache.data.vtab import DERIVED_SPLIT, PRIMARY_SPLITS
from losa_cache.fields import check_fields, compose, option
from losa_cache.methods import get_method, option_fields
from losa_cache.side.layers import parse_layers
from losa_cache.store.taps import (
    deepest_block,
    parse_price_dtype,
    parse_taps,
    price_arrays,
    tap_names,
)
from losa_cache.text import human_bytes, human_seconds, table

#: Fraction of measured matmul throughput a ViT forward reaches (attention, norms,
#: GELU and data movement cost the rest); a deliberate, stated assumption.
FORWARD_EFFICIENCY = 0.5

#: Splits that are the union of others (VTAB-1k's train800val200): counted once in a store.
UNION_SPLITS: dict[str, tuple[str, ...]] = {DERIVED_SPLIT: PRIMARY_SPLITS[:2]}


def store_rows(sizes: dict[str, int], splits: list[str] | None = None) -> int:
    """Distinct rows a store of ``splits`` (default all) holds: union splits count once."""
    chosen = list(sizes) if splits is None else splits
    unknown = sorted(set(chosen) - set(sizes))
    if unknown:
        raise ValueError(f"no split(s) {unknown} in this data set; its splits are {list(sizes)}")
    rows = sum(sizes[s] for s in chosen)
    for union, parts in UNION_SPLITS.items():
        if union in chosen:  # its parts are inside it: don't count their rows twice
            rows -= sum(sizes[p] for p in parts if p in chosen)
    return rows


def price_views(p: dict[str, Any], sizes: dict[str, int], views: int) -> dict[str, Any]:
    """What ``views`` augmented views of every train* image add to a plan ``p``: rows,
    bytes (a view is a row of every array) and extraction work (every row is a forward)."""
    train = [s for s in sizes if s.startswith("train")]
    rows = views * (store_rows(sizes, train) if train else 0)
    added = rows * p["bytes_per_image"]
    return {
        "views": {"count": views, "rows": rows, "bytes": added},
        "images": p["images"] + rows,
        "bytes_total": p["bytes_total"] + added,
        "bytes_per_layer": (p["bytes_total"] + added) // max(p["arrays"], 1),
    }


def split_sizes(dataset: str, data_root: str | None = None) -> dict[str, int]:
    """Rows per split; a bare ``vtab1k`` (no task folder) plans with the shared known sizes."""
    name, _, arg = dataset.strip().partition(":")
    adapter = ADAPTERS.get(name.lower())
    if not arg and adapter is not None and adapter.needs_arg and name.lower() in KNOWN_SIZES:
        return dict(KNOWN_SIZES[name.lower()])
    return dataset_sizes(dataset, data_root=data_root)


def sizes_note(dataset: str, sizes: dict[str, int]) -> str | None:
    """Say which rows a plan leaves out, when the known sizes lack a split."""
    if dataset.strip().lower().startswith("vtab1k") and "test" not in sizes:
        return "the VTAB-1k test split varies by task and is not counted: pass vtab1k:PATH/TASK"
    return None


def train_split(sizes: dict[str, int]) -> str | None:
    return next((s for s in ("train", "train800", "train800val200") if s in sizes), None)


@dataclass(frozen=True)
class Backbone:
    """The dims pricing needs, read off an architecture built on the meta device."""

    model: str
    net: torch.nn.Module
    depth: int
    tokens: int
    dim: int
    prefix_tokens: int
    #: token frames (clip frames / tubelet depth); 1 for images
    time_steps: int = 1

    @classmethod
    def load(cls, model: str, frames: int | None = None) -> Backbone:
        if frames is not None and video_alias(model) is None:
            raise ValueError(
                f"--frames is for video backbones ({', '.join(VIDEO_ALIASES)}); "
                f"{model} is an image model"
            )
        if frames is not None:
            check_clip(frames, video_alias(model).tubelet, "central")
        net = create_architecture(model, device="meta", frames=frames)
        steps = getattr(net, "time_steps", 1)
        tokens = net.num_prefix_tokens + steps * net.patch_embed.num_patches
        return cls(model, net, len(net.blocks), tokens, net.embed_dim, net.num_prefix_tokens, steps)


def price(
    bb: Backbone, sizes: dict[str, int], layers: str, taps: str, dtype: str
) -> dict[str, Any]:
    """Bytes of every array, per image, per split and in total, for one configuration."""
    chosen = parse_layers(layers, bb.depth)
    tap_list = parse_taps(taps, bb.depth)
    dtype = parse_price_dtype(dtype)
    arrays = price_arrays(tap_list, chosen, bb.tokens, bb.dim, dtype)
    per_image = sum(int(a["bytes_per_image"]) for a in arrays)
    by_tap: dict[str, int] = {}
    for a in arrays:
        by_tap[str(a["tap"])] = by_tap.get(str(a["tap"]), 0) + int(a["bytes_per_image"])
    rows = store_rows(sizes)
    return {
        "layers": list(chosen),
        "taps": tap_names(tap_list),
        "dtype": dtype,
        "arrays": len(arrays),
        "array_list": arrays,
        "bytes_per_image_by_tap": by_tap,
        "bytes_per_image": per_image,
        "transfer_mb_per_image": per_image / 1e6,
        "transfer_mib_per_image": per_image / 2**20,
        "bytes_by_split": {k: per_image * n for k, n in sizes.items()},
        "bytes_total": per_image * rows,
        "deepest_block": deepest_block(tap_list, chosen),
    }


def plan(
    model: str,
    dataset: str,
    layers: str = "all",
    dtype: str = "float16",
    data_root: str | None = None,
    rank: int | None = None,
    method: str | None = None,
    side_layers: str | None = None,
    device: str = "auto",
    measure: bool = True,
    taps: str = "blocks",
    frames: int | None = None,
    hidden: int | None = None,
    side_options: dict[str, Any] | None = None,
    views: int = 0,
) -> dict[str, Any]:
    """Sizes, compute, time and (with ``rank``) learned parameters, without loading weights.

    ``views`` (extract --views V) adds V augmented rows per training (``train*``) image:
    the store, its extraction and the images counted are (V + 1) x the training split's.

    A ViViT (``vivit_*``, ``frames`` per clip) also gets ``video``: what caching costs
    against training live, with numbers. ``method`` (a side network or a live baseline)
    adds ``method_cost``: its learned parameters and GMACs / GFLOPs per image, the
    backbone's and the total (:func:`losa_cache.method_cost.method_cost`; ``side_options``:
    the method's own, e.g. losa's ``start`` and ``taps``).
    """
    bb = Backbone.load(model, frames)
    sizes = split_sizes(dataset, data_root)
    cost = price(bb, sizes, layers, taps, dtype)
    backbone = backbone_cost(bb.net, cost["deepest_block"])
    train = train_split(sizes)
    out: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "splits": sizes,
        "images": store_rows(sizes),
        "sizes_note": sizes_note(dataset, sizes),
        "depth": bb.depth,
        "tokens": bb.tokens,
        "dim": bb.dim,
        "frames": getattr(bb.net, "frames", 1),
        "time_steps": bb.time_steps,
        **cost,
        "bytes_per_image_layer": cost["bytes_per_image"] // max(cost["arrays"], 1),
        "bytes_per_layer": cost["bytes_total"] // max(cost["arrays"], 1),
        "backbone": backbone,
        "backbone_gmacs_per_image": backbone["gmacs_per_image"],
        "backbone_gflops_per_image": backbone["gflops_per_image"],
        "bytes_read_per_epoch": cost["bytes_by_split"][train] if train else cost["bytes_total"],
    }
    if views:
        out |= price_views(out, sizes, views)
    if measure:
        out |= time_estimate(device, out["images"], 2 * backbone["gmacs_per_image"] * 1e9)
    if method is not None:
        from losa_cache.method_cost import method_cost

        out["method_cost"] = method_cost(
            bb.net, method, rank, side_layers or layers, hidden, side_options
        )
        out["learned_params"] = out["method_cost"]["learned_params"]
    elif rank is not None:
        out["learned_params"] = side_params(
            "losa",
            rank,
            side_layers or layers,
            bb.depth,
            bb.dim,
            bb.tokens,
            bb.prefix_tokens,
            bb.time_steps,
        )
    if bb.time_steps > 1:
        out["video"] = video_advice(bb, sizes, dtype)
    return out


#: A store is "out of reach" past this size (a large local NVMe array).
REACHABLE_STORE_BYTES = 20 * 10**12


def video_advice(bb: Backbone, sizes: dict[str, int], dtype: str) -> dict[str, Any]:
    """What caching a video backbone costs per clip-layer and in all, against live training.

    Every clip-layer is (prefix + frames x grid) x D values, 16x an image's at 32 frames with
    2-frame tubelets; on Kinetics-scale data storing every block is hundreds of terabytes,
    so live training (the backbone runs each step, nothing backpropagates through it) is
    the default, and a store only pays for a few blocks or MIST's summed ``sum:`` taps.
    """
    all_blocks = price(bb, sizes, "all", "blocks", dtype)
    few = min(4, bb.depth)
    options = {
        "all_blocks": all_blocks["bytes_total"],
        f"evenly:{few}": price(bb, sizes, f"evenly:{few}", "blocks", dtype)["bytes_total"],
        "sum:evenly:3": price(
            bb, sizes, "all", "sum:evenly:3" if bb.depth >= 3 else "sum:all", dtype
        )["bytes_total"],
    }
    per_clip_layer = all_blocks["bytes_per_image"] // max(all_blocks["arrays"], 1)
    reachable = all_blocks["bytes_total"] <= REACHABLE_STORE_BYTES
    tb = {k: v / 1e12 for k, v in options.items()}
    text = (
        f"one clip-layer is {per_clip_layer / 1e6:,.1f} MB ({bb.tokens} tokens x {bb.dim}, "
        f"{all_blocks['dtype']}); all {bb.depth} blocks for {store_rows(sizes):,} clips = "
        f"{tb['all_blocks']:,.1f} TB"
    )
    if reachable:
        text += ": a store of every block fits a large disk, and cached training is fastest"
    else:
        text += (
            f", out of reach: train live (losa-cache train --live: the backbone runs every "
            f"step, nothing is stored, the paper's setting), or store few layers "
            f"(--layers evenly:{few}: {tb[f'evenly:{few}']:,.1f} TB) or summed maps "
            f"(--taps sum:evenly:3: {tb['sum:evenly:3']:,.2f} TB)"
        )
    return {
        "bytes_per_clip_layer": per_clip_layer,
        "store_bytes": options,
        "cache_all_reachable": reachable,
        "recommend": "cached" if reachable else "live",
        "advice": text,
    }


def time_estimate(device: str, images: int, flops_per_image: float) -> dict[str, Any]:
    """Extraction seconds from a matmul probe on the device, with the assumption stated."""
    dev = torch.device(
        "cuda"
        if device == "auto" and torch.cuda.is_available()
        else ("cpu" if device == "auto" else device)
    )
    peak, mm_dtype = measure_matmul_flops(dev)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "measured_matmul_tflops": round(peak / 1e12, 3),
        "matmul_dtype": mm_dtype,
        "assumed_efficiency": FORWARD_EFFICIENCY,
        "extract_seconds_estimate": images * flops_per_image / (peak * FORWARD_EFFICIENCY),
    }


def side_params(
    method: str,
    rank: int | None,
    layers: str | tuple[int, ...],
    depth: int,
    dim: int,
    tokens: int,
    prefix_tokens: int,
    frames: int = 1,
) -> int:
    """Learned parameters of a side network (head excluded, as the paper counts).

    ``rank=None`` keeps the side config's default rank; ``frames``: token frames of video.
    """
    from losa_cache.side import SideConfig, learned_params

    extra = {} if rank is None else {"rank": rank}
    cfg = SideConfig(
        num_layers=depth,
        dim=dim,
        tokens=tokens,
        num_classes=2,
        method=method,
        layers=layers,
        prefix_tokens=prefix_tokens,
        frames=frames,
        **extra,
    )
    return learned_params(cfg)


# ---------------------------------------------------------------- what fits a budget

#: Tap sets the budget listing tries with block subsets, and what each feeds.
BLOCK_TAPS = {
    "blocks": "LoSA",
    "blocks,embed": "LoSA + start from z0 (Table 6)",
    "blocks,attn,mlp": "LoSA + attn/MLP branch taps (Table 4)",
}
BUDGET_DTYPES = ("float16", "int8")  # bf16 prices as fp16; fp32 doubles fp16


def budget_configs(depth: int) -> list[tuple[str, str]]:
    """(layers, taps) pairs to price: block subsets x tap sets, then MIST's summed maps."""
    counts = [n for n in (1, 2, 4, 8, 16, 32) if n < depth]
    subsets = ["all", *(f"evenly:{n}" for n in reversed(counts))]
    pairs = [(layers, taps) for layers in subsets for taps in BLOCK_TAPS]
    return [*pairs, ("all", "sum:evenly:3" if depth >= 3 else "sum:all"), ("all", f"sum:{depth}")]


def plan_budget(
    model: str,
    dataset: str,
    budget: str | int,
    data_root: str | None = None,
    frames: int | None = None,
) -> dict[str, Any]:
    """Configurations whose whole store fits ``budget`` bytes, biggest first."""
    limit = budget if isinstance(budget, int) else parse_size(budget)
    bb = Backbone.load(model, frames)
    sizes = split_sizes(dataset, data_root)
    fits, smallest_losa = [], None
    for layers, taps in budget_configs(bb.depth):
        for dtype in BUDGET_DTYPES:
            row = budget_row(bb, sizes, layers, taps, dtype)
            if row["losa_params"] is not None and (
                smallest_losa is None or row["bytes_total"] < smallest_losa["bytes_total"]
            ):
                smallest_losa = row
            if row["bytes_total"] <= limit:
                fits.append(row)
    fits.sort(key=lambda r: (-r["bytes_total"], r["dtype"], r["taps"]))
    live_only = not any(r["losa_params"] is not None for r in fits)
    return {
        "model": model,
        "dataset": dataset,
        "splits": sizes,
        "images": store_rows(sizes),
        "sizes_note": sizes_note(dataset, sizes),
        "budget_bytes": limit,
        "losa_default_rank": _default_rank(),
        "fits": fits,
        "live_only": live_only,
        "advice": _advice(fits, live_only, smallest_losa, limit),
        "backbone": backbone_cost(bb.net),
    }


def budget_row(
    bb: Backbone, sizes: dict[str, int], layers: str, taps: str, dtype: str
) -> dict[str, Any]:
    """One priced configuration with the learned params of the default LoSA it feeds."""
    cost = price(bb, sizes, layers, taps, dtype)
    has_blocks = "blocks" in cost["taps"]
    maps = cost["arrays"]
    feeds = BLOCK_TAPS.get(
        taps, f"MIST edge network ({maps} summed map{'s' * (maps > 1)}, any k alike; no LoSA)"
    )
    params = (
        side_params(
            "losa",
            None,
            tuple(cost["layers"]),
            bb.depth,
            bb.dim,
            bb.tokens,
            bb.prefix_tokens,
            bb.time_steps,
        )
        if has_blocks
        else None
    )
    train = train_split(sizes)
    return {
        "layers": layers if has_blocks else None,
        "taps": taps,
        "dtype": cost["dtype"],
        "arrays": cost["arrays"],
        "bytes_per_image": cost["bytes_per_image"],
        "bytes_total": cost["bytes_total"],
        "bytes_train": cost["bytes_by_split"][train] if train else None,
        "feeds": feeds,
        "losa_params": params,
    }


def _default_rank() -> int:
    from losa_cache.side import SideConfig

    return int(SideConfig.__dataclass_fields__["rank"].default)


def _advice(
    fits: list[dict[str, Any]], live_only: bool, smallest: dict[str, Any] | None, limit: int
) -> str:
    if not live_only:
        best = [
            max(
                (r for r in fits if r["taps"] == "blocks" and r["dtype"] == d),
                key=lambda r: r["arrays"],
                default=None,
            )
            for d in BUDGET_DTYPES
        ]
        picks = " or ".join(
            f"--layers {r['layers']} --dtype {r['dtype']} ({r['bytes_total'] / 1e9:,.1f} GB)"
            for r in best
            if r is not None
        )
        return f"most blocks for LoSA within the budget: {picks}"
    need = (
        f"; the smallest LoSA store needs {smallest['bytes_total'] / 1e9:,.1f} GB"
        if smallest
        else ""
    )
    return (
        f"no store LoSA can train from fits in {limit / 1e9:,.1f} GB{need}: train live "
        "(losa-cache train --live ..., the backbone runs every step, the paper's setting) "
        "or give a bigger budget"
    )


@dataclass
class PlanConfig:
    """What ``losa-cache plan`` prices: one store configuration (and a method), or with
    ``budget`` every configuration that fits."""

    model: str = option("vit_b", "Backbone alias or timm name.")
    dataset: str = option("demo", "Data set spec; known sizes used if absent.")
    layers: str = option("all", "Blocks to store: all | last:N | evenly:N | 3,6 (0-based).")
    taps: str = option(
        "blocks",
        "What to store: blocks,embed,attn,mlp,sum:K1,K2 (k 1-based: "
        "G_k = z0 + b_1..b_k), sum:all, sum:evenly:N.",
    )
    dtype: str = option("fp16", "Stored dtype: fp16 | bf16 | fp32 | int8.")
    budget: int | None = option(
        None, "List the configurations (layers x taps x dtype) whose store fits this size, "
        "e.g. 500GB, 1.5TB, 800MiB; --layers/--taps/--dtype are then not used.", min=1,
        unit="bytes")  # fmt: skip
    data_root: str | None = option(None, "Root of inat data sets.", panel="Data")
    frames: int | None = option(
        None, "Video backbones: frames per clip (default: the model's).", min=1, panel="Data"
    )
    views: int = option(
        0, "extract --views V: V augmented rows per train* image.", min=0, panel="Data"
    )
    method: str | None = option(
        None,
        "Also price a method (any of `losa-cache train --method`'s, with its options "
        "below): learned parameters and GMACs (= the paper's 'GFLOPs'; GFLOPs = 2x), no "
        "weights built.",
        panel="Method",
    )
    rank: int | None = option(
        None, "Also count a side network of this rank.", min=1, panel="Method"
    )
    side_layers: str | None = option(
        None, "Side network layers (default: --layers).", panel="Method"
    )
    side_taps: str | None = option(
        None,
        "losa's --taps of --method losa: block | attn | mlp "
        "| attn+mlp (--taps is the store's here).",
        panel="Method",
    )
    measure: bool = option(
        True,
        "Run the matmul probe for a time estimate (--no-measure: skip it).",
        panel="Performance",
    )

    def __post_init__(self) -> None:
        check_fields(self)


def run_plan(cfg: PlanConfig) -> dict[str, Any]:
    """:func:`plan` or, with a budget, :func:`plan_budget` of ``cfg`` (what the command
    prints, as a dict: ``plan_text`` words it)."""
    if cfg.budget is not None:
        return plan_budget(cfg.model, cfg.dataset, cfg.budget, cfg.data_root, cfg.frames)
    p = plan(
        cfg.model,
        cfg.dataset,
        cfg.layers,
        cfg.dtype,
        cfg.data_root,
        cfg.rank,
        cfg.method,
        cfg.side_layers,
        measure=cfg.measure,
        taps=cfg.taps,
        frames=cfg.frames,
        side_options=method_options(cfg),
        views=cfg.views,
    )
    return {**p, "rank": cfg.rank}


def method_options(cfg: PlanConfig) -> dict[str, Any]:
    """The priced method's own options, as the flags give them (losa's --taps is
    --side-taps: --taps names the store's)."""
    if cfg.method is None:
        return {}
    own = {f.name for f in fields(_PlanFields)}
    uses = get_method(cfg.method).uses
    opts = {n: getattr(cfg, n) for n in option_fields() if n in uses and n not in own}
    if "taps" in uses and cfg.side_taps is not None:
        opts["taps"] = cfg.side_taps
    return opts


_PlanFields = PlanConfig
#: the store's fields above + every method's own options (as train's: one declaration)
PlanConfig = compose(PlanConfig, option_fields(), panel="Method")  # type: ignore[misc]


def plan_text(p: dict[str, Any]) -> str:
    """A plan (or a budget's list) as the lines ``losa-cache plan`` prints."""
    if "budget_bytes" in p:
        return _budget_text(p)
    unit = "clips" if p["time_steps"] > 1 else "images"
    one = unit[:-1]
    clip = f", {p['frames']}-frame clips" if p["time_steps"] > 1 else ""
    out = [f"{p['model']} on {p['dataset']}{clip}: {p['images']:,} {unit} {p['splits']}"]
    if p["sizes_note"]:
        out.append(f"note          {p['sizes_note']}")
    if {"blocks", "attn", "mlp"} & set(p["taps"]):
        out.append(f"layers        {len(p['layers'])} of {p['depth']} (0-based): {p['layers']}")
    out.append(
        f"taps          {', '.join(p['taps'])}: {p['arrays']} x ({p['tokens']} tokens "
        f"x {p['dim']}) per {one}, {p['dtype']}"
    )
    per_tap = ", ".join(f"{k} {human_bytes(v)}" for k, v in p["bytes_per_image_by_tap"].items())
    out.append(
        f"per {one:<10}{human_bytes(p['bytes_per_image'])} ({per_tap}); transfer "
        f"{p['transfer_mb_per_image']:.3f} MB = {p['transfer_mib_per_image']:.3f} MiB"
    )
    by_split = ", ".join(f"{k} {human_bytes(v)}" for k, v in p["bytes_by_split"].items())
    out.append(f"store total   {human_bytes(p['bytes_total'])} ({by_split})")
    if p.get("views"):
        v = p["views"]
        out.append(
            f"views         {v['count']} per train image: {v['rows']:,} more rows, "
            f"{human_bytes(v['bytes'])} (in the total; extraction runs them too)"
        )
    bb = p["backbone"]
    out.append(
        f"backbone      {bb['gmacs_per_image']:.1f} GMACs/{one} (multiply-accumulates, "
        f"the LoSA paper's 'GFLOPs') = {bb['gflops_per_image']:.1f} GFLOPs; "
        f"{bb['blocks_run']} of {p['depth']} blocks run"
    )
    if "extract_seconds_estimate" in p:
        out.append(
            f"extract time  ~{human_seconds(p['extract_seconds_estimate'])} on "
            f"{p['device']} ({p['measured_matmul_tflops']} TFLOP/s {p['matmul_dtype']} "
            f"matmul measured, x{p['assumed_efficiency']} assumed efficiency)"
        )
    out.append(f"epoch reads   {human_bytes(p['bytes_read_per_epoch'])} per training epoch")
    if "method_cost" in p:
        m = p["method_cost"]
        out.append(
            f"{m['kind']:<13} {m['method']}: {m['learned_params'] / 1e6:.3f}M learned "
            f"params (head excluded); {m['method_gmacs_per_image']:.3f} GMACs/image "
            f"(= {m['method_gflops_per_image']:.3f} GFLOPs) on top of the backbone's "
            f"{m['backbone_gmacs_per_image']:.1f}: total {m['total_gmacs_per_image']:.2f} "
            f"GMACs ({m['setting']})"
        )
    elif "learned_params" in p:
        out.append(
            f"side network  losa r={p['rank']}: {p['learned_params'] / 1e6:.3f}M "
            "learned params (head excluded)"
        )
    if "video" in p:
        out.append(f"video         {p['video']['advice']}")
    return "\n".join(out)


def _budget_text(b: dict[str, Any]) -> str:
    """The fitting configurations as a table, then the advice line."""
    head = (
        f"{b['model']} on {b['dataset']}: {b['images']:,} images {b['splits']}; budget "
        f"{human_bytes(b['budget_bytes'])}; {len(b['fits'])} configurations fit, biggest "
        "first"
    )
    mb = lambda n: "-" if n is None else human_bytes(n)
    rows = [[r["layers"] or "-", r["taps"], r["dtype"], human_bytes(r["bytes_total"]),
             mb(r["bytes_train"]), human_bytes(r["bytes_per_image"]),
             "-" if r["losa_params"] is None else f"{r['losa_params'] / 1e6:.3f}M", r["feeds"]]
            for r in b["fits"]]  # fmt: skip
    cols = ["layers", "taps", "dtype", "store", "train split", "per image",
            f"LoSA r={b['losa_default_rank']} params", "feeds"]  # fmt: skip
    body = table(rows, cols) if rows else "(nothing fits)"
    note = f"\nnote: {b['sizes_note']}" if b["sizes_note"] else ""
    return f"{head}\n{body}\n{b['advice']}\n(bf16 stores price as fp16; fp32 as 2x fp16){note}"
