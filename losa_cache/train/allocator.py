"""glibc's malloc for CPU training from a store: every large buffer its own mapping.

Training a side network on CPU allocates and frees the same few large maps every step
(B x T x D fp32: 18.5 MiB at batch 32 on ViT-B/16 features, ~30 per MIST step) among
small tensors. glibc serves such sizes from its heap once the first one is freed (its
mmap threshold rises to the freed size), and the small tensors split the freed holes,
so the heap keeps 200-400 MB it cannot reuse: MIST's fp32 run at batch 32 peaked at
700-880 MB against ~490 MB of live data, over MIST's 700 MB device budget.
:func:`tune_allocator` sets ``M_MMAP_THRESHOLD`` to 1 MiB (``mallopt``), so every buffer
of 1 MiB or more is its own mapping, returned to the kernel when freed: the peak is the
live data. The price is a page fault per fresh page (the kernel zeroes each new
mapping): ~75% more CPU per step on a loaded 2-core VM; with transparent huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in the environment, read only at process
start) ~15%. It is set by default only for runs with ``--max-memory`` (a device's budget), since it
costs speed; ``LOSA_CACHE_MALLOC=on`` sets it always, ``off`` never. Elsewhere than Linux with
glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

__all__ = ["ENV", "MMAP_THRESHOLD", "heap_for_large_buffers", "tune_allocator"]

ENV = "LOSA_CACHE_MALLOC"  # auto (default: under --max-memory) | on | off
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # <malloc.h>
_M_TRIM_THRESHOLD = -1
#: where glibc's dynamic mmap threshold stops rising (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
HEAP_MMAP_THRESHOLD = 32 << 20
#: the variable a Dask nanny sets in its workers (distributed.nanny.pre-spawn-environ)
DASK_TRIM = "MALLOC_TRIM_THRESHOLD_"
_applied: dict[str, Any] | None = None  # the process-wide setting, once made


def tune_allocator(budget: bool = True) -> dict[str, Any]:
    """Apply the setting (once per process) and say what holds: ``mmap_threshold`` (bytes,
    or None: left to glibc), ``hugepages`` and ``why``.

    ``auto`` (the default) applies it only under a memory budget (``budget``: the run has
    ``--max-memory``), where peak memory matters more than the page faults' CPU; ``on``
    always, ``off`` never."""
    global _applied
    if _applied is not None:
        return _applied
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"{ENV}={choice!r}: choose auto (the default), on or off")
    if choice == "off":
        return _state(None, f"{ENV}=off: malloc left as it is")
    if choice == "auto" and not budget:
        return _state(None, f"no --max-memory: malloc left as it is ({ENV}=on to set it)")
    libc = _glibc()
    if libc is None:
        return _state(None, "not Linux with glibc: malloc left as it is")
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return _state(None, "glibc refused mallopt(M_MMAP_THRESHOLD): malloc left as it is")
    _applied = _state(
        MMAP_THRESHOLD,
        f"glibc M_MMAP_THRESHOLD {MMAP_THRESHOLD >> 20} MiB "
        f"(peak memory = live data; {ENV}=off for glibc's default)",
    )
    return _applied


def heap_for_large_buffers() -> bool:
    """Undo what a Dask nanny's ``MALLOC_TRIM_THRESHOLD_=65536`` does to training: setting
    it turns glibc's dynamic mmap threshold off, so every buffer over 128 KiB is a fresh
    mapping, zeroed page by page (this module's mapping-per-buffer, at all sizes): a
    worker trained a sweep's groups at half the speed of the same process outside Dask
    (benchmarks/sweep_cluster.py, run sweep_cluster-x86_64-20261206-212046). Sets the
    thresholds where the dynamic ones settle (mmap 32 MiB, trim twice that); not with
    ``LOSA_CACHE_MALLOC=on`` or where no nanny set the variable. Whether it changed them."""
    if DASK_TRIM not in os.environ or os.environ.get(ENV, "auto").strip().lower() == "on":
        return False
    libc = _glibc()
    if libc is None:
        return False
    return (
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_MMAP_THRESHOLD) == 1
    )


def _state(threshold: int | None, why: str) -> dict[str, Any]:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    huge = threshold is not None and any(
        t in tunables.split(":") for t in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=2")
    )
    return {"mmap_threshold": threshold, "hugepages": huge, "why": why}


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc on Linux (musl has no
    ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc
