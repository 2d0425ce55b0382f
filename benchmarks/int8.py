"""int8 features vs fp16: bytes per image and reconstruction error on real activations.

    python benchmarks/int8.py                      # embedded demo ViT + random-init ViT-B
    python benchmarks/int8.py --images 2 --models demo    # smoke run

For each backbone, every tap an extraction can write (z0, every block output, every
attn/mlp branch, every MIST sum G_k) is computed on real images (the demo data set's
CIFAR-10 images) in fp32, stored both ways (fp16 cast; int8 codes + one fp16 scale per
(image, token) row, losa_cache.store.quant) and read back. Reports per tap kind:

- bytes per image per array: fp16 = T * D * 2, int8 = T * (D + 2)
- relative reconstruction error per (image, token) row, ||x - x_hat|| / ||x||
  (max and mean), for int8 and, as the floor, for fp16
- the worst absolute error over the int8 bound (must be <= 1)
- decode throughput of a batch: int8 dequantize vs fp16 -> fp32 upcast (numpy, one core)
- training reader throughput, int8 vs fp16 over the same rows: an fp16 store of
  ``--reader-images`` per split (blocks ``--reader-layers``) is extracted, its int8 copy
  written by ``subset --dtype int8``, and each is streamed as training reads it
  (StoreReader: shuffled windows, preadv scatter reads, checked chunks; int8 batches
  dequantized to fp32 as on the training device) for ``--reader-epochs`` epochs after one
  warm-up epoch (page cache warm: the rate is the reader's, not the disk's): img/s, MB/s
  read and bytes read per image

The accuracy part (LoSA r16 and linear probes from int8 vs fp16 stores) is the accuracy
harness's job and not measured here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save

from losa_cache.backbone import create_backbone
from losa_cache.data import get_dataset
from losa_cache.data.torch_dataset import TorchImages
from losa_cache.extract import ExtractConfig, extract
from losa_cache.forward import forward_taps
from losa_cache.store import open_store
from losa_cache.store import schema as S
from losa_cache.store.quant import dequantize, error_bound, quantize
from losa_cache.store.subset import subset_store
from losa_cache.store.taps import array_bytes
from losa_cache.train.reader import StoreReader

#: how each backbone gets its weights: the demo ViT loads its embedded (trained) ones
MODELS = {"demo": {}, "vit_b": {"random_init": True}}


def images(backbone, n: int) -> torch.Tensor:
    data = TorchImages(get_dataset("demo"), backbone.transform(), list(range(n)))
    return torch.stack([data[i][0] for i in range(n)])


def rel_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x - y|| / ||x|| per (image, token) row (0 where x is 0)."""
    norm = x.norm(dim=-1)
    return torch.where(norm > 0, (x - y).norm(dim=-1) / norm.clamp_min(1e-30), 0.0)


def measure_model(model: str, n: int) -> list[dict[str, object]]:
    backbone = create_backbone(model, **MODELS.get(model, {"random_init": True}))
    depth, t, d = backbone.depth, backbone.tokens, backbone.dim
    layers = list(range(depth))
    taps = ["blocks", "embed", "attn", "mlp", *[f"sum:{k}" for k in range(1, depth + 1)]]
    outs = forward_taps(backbone.model, images(backbone, n), layers, taps)
    kind_of = {group: kind for kind, group in S.TAP_GROUPS.items()}
    by_kind: dict[str, list[torch.Tensor]] = {}
    for name, x in outs.items():
        by_kind.setdefault(kind_of[name.split("/")[0]], []).append(x.float())
    rows = []
    for kind, xs in by_kind.items():
        x = torch.stack(xs)  # (arrays, N, T, D)
        q, s = quantize(x)
        back = dequantize(q, s)
        err8, err16 = rel_error(x, back), rel_error(x, x.half().float())
        over = ((x - back).abs().amax(-1) / error_bound(x).clamp_min(1e-30)).max()
        rows.append({
            "model": model, "tap": kind, "arrays": len(xs),
            "fp16_bytes_per_image": array_bytes(t, d, "float16") * len(xs),
            "int8_bytes_per_image": array_bytes(t, d, "int8") * len(xs),
            "int8_rel_err_max": float(err8.max()), "int8_rel_err_mean": float(err8.mean()),
            "fp16_rel_err_max": float(err16.max()), "fp16_rel_err_mean": float(err16.mean()),
            "int8_err_over_bound_max": float(over),
            **decode_speed(q.numpy(), s.numpy(), x.half().numpy()),
        })  # fmt: skip
    return rows


def decode_speed(q: np.ndarray, s: np.ndarray, h: np.ndarray) -> dict[str, float]:
    """Values decoded per second into fp32: int8 codes x scales vs an fp16 upcast."""

    def rate(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return q.size / max(time.perf_counter() - t0, 1e-9) / 1e6

    return {"int8_decode_mvalues_s": rate(lambda: dequantize(q, s)),
            "fp16_decode_mvalues_s": rate(lambda: h.astype(np.float32))}  # fmt: skip


def reader_speed(
    model: str, images: int, layers: str, batch: int, epochs: int, root: Path
) -> list[dict[str, object]]:
    """Training-reader throughput from an fp16 store and its int8 subset (same rows)."""
    fp16, int8 = root / f"{model}-fp16.zarr", root / f"{model}-int8.zarr"
    extract(
        ExtractConfig(
            model=model,
            dataset="demo",
            store=str(fp16),
            dtype="float16",
            layers=layers,
            limit=images,
            workers=0,
            **MODELS.get(model, {}),
        ),
        progress=False,
    )
    subset_store(str(fp16), str(int8), dtype="int8")
    out = []
    for path in (fp16, int8):
        store = open_store(str(path))
        rows = np.flatnonzero(store.valid)
        steps = -(-len(rows) // batch)  # batches per epoch
        with StoreReader(
            store, rows, np.zeros(len(rows), np.int64), store.layers, batch, seed=0
        ) as reader:
            stream = reader.batches()
            for _ in range(steps):  # warm-up epoch: page cache, threads
                next(stream)
            read0, t0 = reader.bytes_read, time.perf_counter()
            for _ in range(steps * epochs):
                next(stream)
            seconds = time.perf_counter() - t0
            read = reader.bytes_read - read0
            stream.close()
            direct = reader.direct
        n = steps * epochs * batch
        out.append({"model": model, "store_dtype": store.dtype, "blocks": len(store.layers),
                    "tokens": store.layout.tokens, "dim": store.layout.dim, "images": n,
                    "reader_img_s": n / seconds, "reader_mb_s": read / seconds / 1e6,
                    "bytes_read_per_image": read / n, "direct_reads": direct})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="images per backbone")
    p.add_argument("--models", default="demo,vit_b", help="comma-separated backbone aliases")
    p.add_argument(
        "--reader-images",
        type=int,
        default=256,
        help="rows per split of the reader stores (0: no reader measurement)",
    )
    p.add_argument(
        "--reader-layers",
        default="0",
        help="blocks of the reader stores (few: the backbone runs up to them)",
    )
    p.add_argument("--reader-batch", type=int, default=64, help="reader batch size")
    p.add_argument("--reader-epochs", type=int, default=3, help="timed epochs per store")
    p.add_argument(
        "--workdir",
        default=None,
        help="folder for the reader stores (default: a temporary one, removed)",
    )
    args = p.parse_args(argv)
    with torch.no_grad():  # not set_grad_enabled(False): main() also runs inside tests
        rows = [r for m in args.models.split(",") for r in measure_model(m, args.images)]
    print_table(rows, ["model", "tap", "arrays", "fp16_bytes_per_image", "int8_bytes_per_image",
                       "int8_rel_err_max", "int8_rel_err_mean", "fp16_rel_err_max",
                       "int8_err_over_bound_max", "int8_decode_mvalues_s",
                       "fp16_decode_mvalues_s"])  # fmt: skip
    reader = []
    if args.reader_images > 0:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            reader = [
                r
                for m in args.models.split(",")
                for r in reader_speed(
                    m,
                    args.reader_images,
                    args.reader_layers,
                    args.reader_batch,
                    args.reader_epochs,
                    Path(tmp),
                )
            ]
        print_table(reader, ["model", "store_dtype", "blocks", "tokens", "dim", "images",
                             "reader_img_s", "reader_mb_s", "bytes_read_per_image",
                             "direct_reads"])  # fmt: skip
    out = save(
        "int8",
        {
            "images": args.images,
            "rows": rows,
            "reader": reader,
            "reader_settings": {
                "images_per_split": args.reader_images,
                "layers": args.reader_layers,
                "batch": args.reader_batch,
                "epochs": args.reader_epochs,
            },
        },
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
