"""Crop modes of the image preprocessing: ``center`` (timm's eval transform: resize the
shorter side to input/crop_pct, centre crop) and ``squash`` (the whole image resized to
the input size, aspect ratio not kept, nothing cropped: the VTAB-1k protocol of the PETL
papers, MIST's "directly resized to 224 x 224").

Both are timm ``crop_mode`` values; squash is timm's squash with ``crop_pct`` 1.0. The
mode is part of the backbone's preprocessing, hence of its fingerprint: a store resumed
with another mode is refused, and an adapter's backbone is rebuilt with its mode.
"""

from __future__ import annotations

from typing import Any

CROP_MODES = ("center", "squash")


def check_crop_mode(mode: str | None, crop_pct: float | None = None) -> None:
    """Refuse an unknown mode, and a squash that would still crop (crop_pct < 1)."""
    if mode is not None and mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode {mode!r}; choose {' or '.join(CROP_MODES)}")
    if mode == "squash" and crop_pct not in (None, 1.0):
        raise ValueError(
            f"--crop-mode squash resizes the whole image (crop_pct 1.0); drop --crop-pct "
            f"{crop_pct}, or use --crop-mode center"
        )


def crop_preprocess(mode: str | None, crop_pct: float | None) -> dict[str, Any]:
    """The preprocessing overrides of a crop mode (None values: the backbone's own)."""
    check_crop_mode(mode, crop_pct)
    return {"crop_mode": mode, "crop_pct": 1.0 if mode == "squash" else crop_pct}


def recorded_preprocess(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a fingerprint records (input size, resize, crop, mean/std), as
    ``create_backbone(preprocess=...)`` takes it: rebuilds the backbone an adapter's
    features came from."""
    from losa_cache.backbone import PREPROCESS_KEYS

    out = {k: fingerprint[k] for k in PREPROCESS_KEYS if fingerprint.get(k) is not None}
    for k in ("input_size", "mean", "std"):
        if k in out:
            out[k] = tuple(out[k])
    return out
