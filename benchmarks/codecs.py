"""Which compressor for block activations? Ratio and speed on real features, one run.

    python benchmarks/codecs.py --store demo_out/demo.zarr     # features of a trained ViT

For every codec in the store schema, each stored block's features are re-encoded into an
in-memory Zarr array with the store's own chunking; prints compression ratio, write
and read throughput. The default codec (losa_cache.store.schema.DEFAULT_CODEC) is the
one these numbers justify.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save

from losa_cache.store import open_store
from losa_cache.store.schema import CODECS, DTYPES


def measure(data: np.ndarray, codec: str, chunk_rows: int) -> dict[str, float]:
    store = zarr.storage.MemoryStore()
    comp = CODECS[codec]
    arr = zarr.create_array(
        store,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(chunk_rows, *data.shape[1:]),
        compressors=[comp] if comp is not None else None,
    )
    t0 = time.perf_counter()
    arr[:] = data
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = arr[:]
    read = time.perf_counter() - t0
    assert np.array_equal(back.view(np.uint8), data.view(np.uint8)), codec  # lossless
    stored = sum(len(v) for k, v in store._store_dict.items() if not k.endswith("zarr.json"))
    mb = data.nbytes / 1e6
    return {
        "codec": codec,
        "ratio": data.nbytes / stored,
        "write_mb_s": mb / write,
        "read_mb_s": mb / read,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="a complete store with real activations")
    p.add_argument("--rows", type=int, default=2048, help="rows per block to test")
    args = p.parse_args(argv)
    store = open_store(args.store)
    storage = DTYPES[store.dtype][0]
    data = np.concatenate(
        [store.group[f"features/block_{b:03d}"][: args.rows] for b in store.layers]
    ).astype(storage)
    rows = [measure(data, c, store.layout.chunk_rows) for c in CODECS]
    print(
        f"{store.fingerprint['model']} features, {store.dtype}, {data.nbytes / 1e6:.1f} MB, "
        f"blocks {store.layers}"
    )
    print_table(rows, ["codec", "ratio", "write_mb_s", "read_mb_s"])
    out = save(
        "codecs",
        {
            "store": args.store,
            "fingerprint": store.fingerprint,
            "dtype": store.dtype,
            "bytes": int(data.nbytes),
            "results": rows,
        },
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
