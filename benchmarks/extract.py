"""Extraction speed: a bare backbone forward loop vs full extraction, same images, one run.

    python benchmarks/extract.py                       # CPU: demo backbone, 512 images
    python benchmarks/extract.py --model vit_b --random-init --images 4096   # on a GPU

Writer overhead = 1 - (full extraction img/s) / (bare forward img/s). Target on GPU
with ViT-B and larger: <= 10%. On CUDA it also prints the backbone's FLOP utilisation
against a bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, print_table, save

from losa_cache.backbone import create_backbone
from losa_cache.backbone.registry import create_architecture
from losa_cache.compute import measure_matmul_flops, vit_macs
from losa_cache.data import get_dataset
from losa_cache.extract import (
    ExtractConfig,
    compute_dtype,
    extract,
    make_loader,
    select_rows,
)
from losa_cache.side.layers import parse_layers


def bench_rows(args: argparse.Namespace) -> tuple[str, list[int]]:
    """The first --images rows of the data set's first split (what both modes process)."""
    dataset = get_dataset(args.dataset)
    split = dataset.splits[0]
    rows, _ = select_rows(dataset, args.images, [split])
    return split, rows


def bare_forward(args: argparse.Namespace, device: torch.device) -> float:
    """img/s of decode + transform + forward_intermediates, nothing copied back or written."""
    backbone = create_backbone(args.model, random_init=args.random_init, device=device)
    layers = list(parse_layers(args.layers, backbone.depth))
    backbone.prune(layers)
    _, rows = bench_rows(args)
    batches = [
        list(range(i, min(i + args.batch_size, len(rows))))
        for i in range(0, len(rows), args.batch_size)
    ]
    amp = compute_dtype("auto", device)
    loader = make_loader(get_dataset(args.dataset), backbone, rows, batches, args.workers, device)
    t0, n = time.perf_counter(), 0
    for i, (x, *_rest) in enumerate(loader):
        if i == 1:  # skip the first batch: worker start-up and kernel warm-up
            _sync(device)
            t0, n = time.perf_counter(), 0
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            backbone.intermediates(x.to(device, non_blocking=True), layers)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def full_extract(args: argparse.Namespace, folder: Path) -> tuple[float, int]:
    """img/s of `extract` (decode, forward, cast, copy back, write, checksum) on the same rows."""
    split, _ = bench_rows(args)
    cfg = ExtractConfig(
        model=args.model,
        random_init=args.random_init,
        dataset=args.dataset,
        store=str(folder / "bench.zarr"),
        layers=args.layers,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        codec=args.codec,
        limit=args.images,
        splits=[split],
    )
    result = extract(cfg, progress=False)
    return result.images_per_s, result.bytes_written


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--layers", default="all")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--codec", default="none")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--shard-rows", type=int, default=None, help="default: ~64 MB per layer")
    p.add_argument("--chunk-rows", type=int, default=None, help="default: ~2 MB")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bare = bare_forward(args, device)
    with tempfile.TemporaryDirectory() as tmp:
        full, nbytes = full_extract(args, Path(tmp))
    # FLOPs = 2 x MACs (the LoSA paper's tables call MACs "GFLOPs"); no weights needed
    gmacs = vit_macs(create_architecture(args.model, device="meta")).total / 1e9
    gflops = 2 * gmacs
    row = {"mode": "bare forward", "img_s": bare, "tflops": bare * gflops / 1e3}
    row2 = {"mode": "full extract", "img_s": full, "tflops": full * gflops / 1e3}
    overhead = 1 - full / bare
    payload = {
        "args": vars(args),
        "bare_img_s": bare,
        "extract_img_s": full,
        "writer_overhead": overhead,
        "gmacs_per_image": gmacs,
        "gflops_per_image": gflops,
        "bytes_written": nbytes,
    }
    if device.type == "cuda":
        peak, _ = measure_matmul_flops(device, seconds=1.0)
        payload["bf16_matmul_peak_tflops"] = peak / 1e12
        payload["flop_utilisation_bare"] = bare * gflops * 1e9 / peak
        payload["flop_utilisation_extract"] = full * gflops * 1e9 / peak
    print(f"device: {device_info()}")
    print_table([row, row2], ["mode", "img_s", "tflops"])
    print(f"writer overhead: {overhead:.1%} (target on GPU, ViT-B+: <= 10%)")
    if "bf16_matmul_peak_tflops" in payload:
        print(
            f"FLOP utilisation: {payload['flop_utilisation_extract']:.1%} of a "
            f"{payload['bf16_matmul_peak_tflops']:.0f} TFLOP/s bf16 matmul peak"
        )
    print(f"results: {save('extract', payload)}")


if __name__ == "__main__":
    main()
