"""``--device`` names -> torch devices, refusing ones this machine does not have.

``parse_device`` only checks the spelling (a config may be written on a laptop and run on
a GPU worker); ``pick_device`` also checks the device is there, before any model is built,
so ``--device cuda`` without a GPU says so instead of failing deep inside torch.
The one picker of every command (extract, train, sweep, predict, eval): it needs torch
only, so training from a store imports it without the backbone stack.
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_TYPES = {"cpu", "cuda", "mps"}


def parse_device(name: str) -> str:
    """``name`` if it spells a device ("auto" included), else a ValueError with the choices."""
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in _TYPES:
        raise ValueError(f"--device {name!r} is not a device: choose {DEVICE_CHOICES}")
    return name


def pick_device(name: str) -> torch.device:
    """The device to run on: "auto" is CUDA when there is a GPU, else the CPU."""
    if parse_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        _require_cuda(name, device.index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: no Apple GPU (MPS) here; use --device cpu or auto")
    return device


def _require_cuda(name: str, index: int | None) -> None:
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: no CUDA GPU is visible here (torch.cuda.is_available() is "
            "False); use --device cpu, or --device auto to take a GPU when there is one"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ValueError(
            f"--device {name}: only {count} GPU(s) are visible (cuda:0 to cuda:{count - 1})"
        )
