"""The device picker lives in :mod:`losa_cache.device` (torch only, so training from a store
imports no backbone stack); this name stays for the callers that import it from here."""

from __future__ import annotations

from losa_cache.device import DEVICE_CHOICES, parse_device, pick_device

__all__ = ["DEVICE_CHOICES", "parse_device", "pick_device"]
