"""``--cache auto|gpu|ram|none``: where the needed features live during training.

Small training sets (VTAB-1k with all ViT-B layers is 3.6 GB) fit in GPU memory: then
a batch is one ``index_select`` on the GPU and the store is read exactly once. ``auto``
picks the fastest place that fits with a safety margin, and says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil
import torch

__all__ = ["CACHE_MODES", "CacheChoice", "choose_cache", "free_memory"]

CACHE_MODES = ("auto", "gpu", "ram", "none")
GiB = 1 << 30

#: Fraction of free memory a cache may take, and memory always left free: training
#: itself needs room (activations, the optimizer, the next window of a streaming reader).
GPU_FRACTION, GPU_RESERVE = 0.6, 2 * GiB
RAM_FRACTION, RAM_RESERVE = 0.5, 2 * GiB


@dataclass(frozen=True)
class CacheChoice:
    """Where features are held, how many bytes, and the reason (logged and in metrics)."""

    mode: str  # gpu | ram | none
    bytes: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def on(self, device: torch.device) -> bool:
        """Whether the cache shares ``device``'s memory with the models."""
        return self.mode != "none" and (self.mode == "gpu") == (device.type == "cuda")


def free_memory(device: torch.device) -> dict[str, int]:
    """Free bytes in host RAM and (on CUDA) on the device."""
    out = {"ram": int(psutil.virtual_memory().available)}
    if device.type == "cuda":
        out["gpu"] = int(torch.cuda.mem_get_info(device)[0])
    return out


def _budget(free: int, fraction: float, reserve: int) -> int:
    return max(0, int(free * fraction) - reserve)


def choose_cache(
    mode: str, need: int | None, device: torch.device, free: dict[str, int] | None = None
) -> CacheChoice:
    """Resolve ``mode`` for ``need`` bytes of features (None: live, nothing to hold);
    explicit modes that cannot fit fail."""
    if mode not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {mode!r}; choose one of {list(CACHE_MODES)}")
    if need is None:
        return CacheChoice("none", 0, "live mode: the backbone runs on every batch")
    if mode == "none":
        return CacheChoice("none", 0, "--cache none: streaming from the store")
    free = free if free is not None else free_memory(device)
    gpu = _budget(free["gpu"], GPU_FRACTION, GPU_RESERVE) if "gpu" in free else None
    ram = _budget(free["ram"], RAM_FRACTION, RAM_RESERVE)
    mb = need / 1e6
    if mode == "gpu":
        if gpu is None:
            raise ValueError("--cache gpu needs a CUDA device; use --cache ram or auto")
        if need > gpu:
            raise ValueError(
                f"--cache gpu: {mb:,.0f} MB of features do not fit the "
                f"{gpu / 1e6:,.0f} MB GPU budget ({GPU_FRACTION:.0%} of free "
                "minus 2 GiB); use --cache ram/none or fewer --layers"
            )
        return CacheChoice("gpu", need, f"--cache gpu: {mb:,.1f} MB on the GPU")
    if mode == "ram":
        if need > ram:
            raise ValueError(
                f"--cache ram: {mb:,.0f} MB of features do not fit the "
                f"{ram / 1e6:,.0f} MB RAM budget ({RAM_FRACTION:.0%} of available "
                "minus 2 GiB); use --cache none or fewer --layers"
            )
        return CacheChoice("ram", need, f"--cache ram: {mb:,.1f} MB in host memory")
    if gpu is not None and need <= gpu:
        return CacheChoice(
            "gpu", need, f"auto: {mb:,.1f} MB fit the GPU budget ({gpu / 1e6:,.0f} MB)"
        )
    if need <= ram:
        where = "no GPU" if gpu is None else f"over the GPU budget ({gpu / 1e6:,.0f} MB)"
        return CacheChoice(
            "ram", need, f"auto: {mb:,.1f} MB {where}; fit the RAM budget ({ram / 1e6:,.0f} MB)"
        )
    return CacheChoice(
        "none",
        0,
        f"auto: {mb:,.1f} MB exceed the RAM budget ({ram / 1e6:,.0f} MB): streaming from the store",
    )
