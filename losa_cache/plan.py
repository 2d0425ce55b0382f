"""Say what an extraction and its training will cost before anything runs.

Store bytes follow from the token layout alone; backbone FLOPs are counted from the
architecture (matmuls of every block up to the deepest stored one); the time estimate
divides them by a matmul throughput measured on the detected device, times an
efficiency factor, and says so.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from losa_cache.backbone import create_backbone  # noqa: F401  (registers our architectures)
from losa_cache.backbone.registry import create_architecture
from losa_cache.data import dataset_sizes
from losa_cache.side.layers import parse_layers
from losa_cache.store.schema import DTYPES, parse_dtype

#: Fraction of measured matmul throughput a ViT forward reaches (attention, norms,
#: GELU and data movement cost the rest); a deliberate, stated assumption.
FORWARD_EFFICIENCY = 0.5


def vit_flops(net: torch.nn.Module, upto_block: int | None = None) -> int:
    """Forward FLOPs (2 x MACs) of one image through patch embed and blocks 0..upto_block."""
    dim = net.embed_dim
    grid = net.patch_embed.grid_size
    patches = grid[0] * grid[1]
    tokens = patches + net.num_prefix_tokens
    in_ch = net.patch_embed.proj.in_channels
    k = net.patch_embed.proj.kernel_size
    flops = 2 * patches * in_ch * k[0] * k[1] * dim
    last = len(net.blocks) - 1 if upto_block is None else upto_block
    for block in list(net.blocks)[: last + 1]:
        hidden = block.mlp.fc1.out_features
        flops += 2 * tokens * (4 * dim * dim + 2 * dim * hidden)  # qkv, proj, MLP
        flops += 4 * tokens * tokens * dim  # QK^T and attention x V
    return flops


def measure_matmul_flops(device: torch.device, seconds: float = 0.3) -> tuple[float, str]:
    """Achieved matmul FLOP/s on ``device`` in the dtype extraction would use there."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return 2 * n**3 * reps / elapsed, str(dtype).removeprefix("torch.")


def plan(
    model: str,
    dataset: str,
    layers: str = "all",
    dtype: str = "float16",
    data_root: str | None = None,
    rank: int | None = None,
    method: str = "losa",
    side_layers: str | None = None,
    device: str = "auto",
    measure: bool = True,
) -> dict[str, Any]:
    """Sizes, FLOPs, time and (with ``rank``) learned parameters, without loading weights."""
    net = create_architecture(model, device="meta")
    depth = len(net.blocks)
    chosen = parse_layers(layers, depth)
    tokens = net.num_prefix_tokens + net.patch_embed.num_patches
    dtype = parse_dtype(dtype)
    row_bytes = tokens * net.embed_dim * DTYPES[dtype][1]
    sizes = dataset_sizes(dataset, data_root=data_root)
    images = sum(sizes.values())
    train = next((sizes[s] for s in ("train", "train800", "train800val200") if s in sizes), images)
    flops = vit_flops(net, max(chosen))
    out: dict[str, Any] = {
        "model": model,
        "dataset": dataset,
        "splits": sizes,
        "images": images,
        "depth": depth,
        "layers": list(chosen),
        "tokens": tokens,
        "dim": net.embed_dim,
        "dtype": dtype,
        "bytes_per_image_layer": row_bytes,
        "bytes_per_layer": row_bytes * images,
        "bytes_total": row_bytes * images * len(chosen),
        "bytes_by_split": {k: row_bytes * n * len(chosen) for k, n in sizes.items()},
        "backbone_gflops_per_image": flops / 1e9,
        "bytes_read_per_epoch": row_bytes * train * len(chosen),
    }
    if measure:
        dev = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        peak, mm_dtype = measure_matmul_flops(dev)
        out["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        out["measured_matmul_tflops"] = round(peak / 1e12, 3)
        out["matmul_dtype"] = mm_dtype
        out["assumed_efficiency"] = FORWARD_EFFICIENCY
        out["extract_seconds_estimate"] = images * flops / (peak * FORWARD_EFFICIENCY)
    if rank is not None:
        out["learned_params"] = side_params(
            method, rank, side_layers or layers, depth, net.embed_dim, tokens, net.num_prefix_tokens
        )
    return out


def side_params(
    method: str, rank: int, layers: str, depth: int, dim: int, tokens: int, prefix_tokens: int
) -> int:
    """Learned parameters of a side network (head excluded, as the paper counts)."""
    from losa_cache.side import SideConfig, learned_params

    cfg = SideConfig(
        num_layers=depth,
        dim=dim,
        tokens=tokens,
        num_classes=2,
        method=method,
        rank=rank,
        layers=layers,
        prefix_tokens=prefix_tokens,
    )
    return learned_params(cfg)
