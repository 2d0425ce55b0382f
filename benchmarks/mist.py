"""MIST's edge network on a CPU device vs LoSA r16 and the linear probe, from one store.

    python benchmarks/mist.py                    # ViT-B/16 random init, demo images at 224 px
    python benchmarks/mist.py --store S.zarr     # an existing store holding every block
    python benchmarks/mist.py --model vit_micro --images 32 --steps 3   # smoke test

MIST's setting (the paper's Sec. 4.4: Raspberry Pi 4B, batch 32, 224 px, 663 MB peak while
fine-tuning, 255 MB at inference). Per method, each in a fresh subprocess so its peak is
its own, everything counted (interpreter, torch, reader, model; VmHWM of the process):

* ``train``: ``losa-cache train`` through the CLI at --batch-size, --steps steps:
  peak RSS and training img/s (the trainer's own rate);
* ``infer``: the trained adapter on one batch of features from the store: peak RSS;
* edge GMACs per image (torch's flop counter on the side network + head, MACs = FLOPs/2);
* transfer per image: the maps the method reads, in fp32 MiB (the paper's unit: ViT-B/16
  G_k = 0.577 MiB) and in the store's dtype.

MIST is timed on G_N (the store's ``sum:N`` tap, ``--gather-k N``: one run, the cost of
any one k; choosing k on val trains one run per candidate). LoSA reads every block the
store holds. An existing ``--store`` needs every block and ``sum:N`` (or ``embed``, from
which the feed sums G_N).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import device_info, print_table, save

METHODS: dict[str, list[str]] = {
    "mist": ["--method", "mist", "--gather-k", "{depth}", "--optimizer", "adamw"],
    "losa_r16": ["--method", "losa", "--rank", "16", "--layers", "store"],
    "linear": ["--method", "linear"],
}

TRAIN = """
import json, sys
from losa_cache.cli.main import app
app(sys.argv[1:], standalone_mode=False)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("RESULT=" + json.dumps({"vm_hwm_kb": int(status["VmHWM"].split()[0])}))
"""

INFER = """
import json, sys
import torch
from losa_cache.adapter import load_adapter
from losa_cache.store import open_store
from losa_cache.train.keys import side_inputs
adapter, store = load_adapter(sys.argv[1]), open_store(sys.argv[2])
batch = int(sys.argv[3])
read = lambda k: store.features(k) if isinstance(k, int) else store.tap_features(k)
feats = {k: torch.from_numpy(read(k)[:batch]) for k in side_inputs(adapter.model)}
with torch.no_grad():
    logits = adapter.model(feats)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("RESULT=" + json.dumps({"vm_hwm_kb": int(status["VmHWM"].split()[0]),
                              "shape": list(logits.shape)}))
"""


def child(code: str, args: list[str], threads: int) -> dict[str, Any]:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=3600
    )
    if res.returncode:
        raise RuntimeError(f"child failed: {res.stderr[-2000:]}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line.removeprefix("RESULT="))


def make_store(args: argparse.Namespace, folder: Path) -> str:
    from losa_cache.extract import ExtractConfig, extract

    path = str(folder / "features.zarr")
    extract(
        ExtractConfig(
            model=args.model,
            random_init=True,
            dataset="demo",
            store=path,
            layers="all",
            taps="blocks,sum:evenly:1",
            dtype=args.dtype,
            limit=args.images,
            workers=0,
        ),
        progress=True,
    )  # sum:evenly:1 = G_N, every block summed
    return path


def features(adapter: Any, store: Any, rows: int) -> dict[Any, Any]:
    """The maps the adapter reads (blocks, taps) of the first ``rows`` rows, as tensors."""
    import torch

    from losa_cache.train.keys import side_inputs

    read = lambda k: store.features(k) if isinstance(k, int) else store.tap_features(k)
    return {k: torch.from_numpy(read(k)[:rows]) for k in side_inputs(adapter.model)}


def edge_gmacs(adapter_dir: str, store: str) -> float:
    """Side network + head MACs per image (FLOPs / 2), from torch's flop counter."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from losa_cache.adapter import load_adapter
    from losa_cache.store import open_store

    adapter = load_adapter(adapter_dir)
    feats = {k: v.float() for k, v in features(adapter, open_store(store), 1).items()}
    # the math kernel: the counter does not see the CPU flash-attention kernel's matmuls
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        adapter.model.float()(feats)
    return counter.get_total_flops() / 2 / 1e9


def transfer(maps: int, tokens: int, dim: int, itemsize: int) -> dict[str, float]:
    return {
        "maps": maps,
        "fp32_mib": maps * tokens * dim * 4 / 2**20,
        "store_mib": maps * tokens * dim * itemsize / 2**20,
    }


def measure(
    name: str, extra: list[str], store: str, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    from losa_cache.adapter import load_adapter
    from losa_cache.store import open_store

    run = out / name
    extra = [a.format(depth=open_store(store).depth) for a in extra]
    cmd = [
        "train",
        "--store",
        store,
        "--out",
        str(run),
        *extra,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--device",
        "cpu",
        "--workers",
        "1",
        "--cache",
        args.cache,
        "--json",
    ]
    trained = child(TRAIN, cmd, args.threads)
    metrics = json.loads((run / "metrics.json").read_text())
    infer = child(INFER, [str(run), store, str(args.batch_size)], args.threads)
    from losa_cache.train.keys import side_inputs

    adapter, s = load_adapter(run), open_store(store)
    layers = side_inputs(adapter.model)
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4}.get(s.dtype, 2)
    return {
        "method": name,
        "train_peak_mb": trained["vm_hwm_kb"] / 1024,
        "train_img_s": metrics["images_per_s"],
        "infer_peak_mb": infer["vm_hwm_kb"] / 1024,
        "edge_gmacs": edge_gmacs(str(run), store),
        "learned_params": metrics["learned_params"],
        "reads": list(layers),
        "transfer": transfer(len(layers), s.layout.tokens, s.layout.dim, itemsize),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="existing store with every block (default: extract one)")
    p.add_argument("--model", default="vit_b", help="backbone when extracting (random init)")
    p.add_argument("--images", type=int, default=256, help="images per split when extracting")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cache", default="none", help="train --cache (none: stream, the device's)")
    p.add_argument("--threads", type=int, default=2, help="OMP threads of each child")
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-mist-") as tmp:
        store = args.store or make_store(args, Path(tmp))
        rows = [measure(m, METHODS[m], store, args, Path(tmp)) for m in args.methods.split(",")]
    print_table(
        [{**r, "fp32_mib": r["transfer"]["fp32_mib"]} for r in rows],
        [
            "method",
            "train_peak_mb",
            "train_img_s",
            "infer_peak_mb",
            "edge_gmacs",
            "learned_params",
            "fp32_mib",
        ],
    )
    payload = {
        "settings": {k: v for k, v in vars(args).items()},
        "device_kind": device_info()["kind"],
        "runs": rows,
    }
    print(f"wrote {save('mist', payload)}")
    return payload


if __name__ == "__main__":
    main()
