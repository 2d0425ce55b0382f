"""Shared benchmark plumbing: device description, result JSON, tables, store extraction."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from losa_cache.versions import versions

#: Where results JSON go; LOSA_BENCH_RESULTS redirects them (benchmarks/gpu.sh --dry-run tests).
RESULTS = Path(os.environ.get("LOSA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
#: The machine's 1/5/15-minute load averages when the benchmark started: a CPU number taken
#: while something else ran says so in its JSON.
LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]


def device_info() -> dict[str, Any]:
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)}
    return {
        "kind": "cpu",
        "name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write results/<name>-<device>-<date>.json with device, versions and date."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    dev = device_info()
    stamp = dt.datetime.now(dt.timezone.utc)
    tag = dev["name"].replace(" ", "_").replace("/", "_")[:40] or dev["kind"]
    out = RESULTS / f"{name}-{tag}-{stamp:%Y%m%d-%H%M%S}.json"
    doc = {
        "benchmark": name,
        "date": stamp.isoformat(timespec="seconds"),
        "device": dev,
        "versions": versions(),
        "load_at_start": LOAD_AT_START,
        **payload,
    }
    out.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    return out


def extract_store(**fields: Any) -> Any:
    """Extract a benchmark's store (``ExtractConfig`` fields), saying in one line what it
    cost; returns the extract result."""
    from losa_cache.extract import ExtractConfig, extract

    t0 = time.perf_counter()
    res = extract(ExtractConfig(**fields), progress=False)
    print(
        f"store {fields['store']}: {res.num_images} images of {fields.get('model')} extracted "
        f"in {time.perf_counter() - t0:.1f} s ({res.images_per_s:,.0f} img/s), "
        f"{res.bytes_written / 1e6:,.1f} MB"
    )
    return res


def print_table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    cells = [cols] + [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return "" if v is None else str(v)
