"""Decode any image file (or bytes) into a fully loaded RGB PIL image, or fail loudly.

Every adapter goes through :func:`open_rgb` so that one rule decides what a "good" image is:
fully decoded (truncated files fail; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never touched),
EXIF orientation applied (as viewers and ``PIL.ImageOps.exif_transpose`` do: a phone photo
is stored sideways with a tag saying so), every mode mapped to RGB the same way, and every
failure an :class:`ImageDecodeError` that names the file, so extraction can skip and report
it instead of dying.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from losa_cache.checks import DEFAULT_MAX_PIXELS
from losa_cache.data.base import ImageDecodeError
from losa_cache.data.opener import DEFAULT_MAX_FILE_BYTES, FileRefused, read_regular

_RAISE_LIMIT = "pass a larger --max-pixels (Python: max_pixels=) if the file is trusted"
_PIL_LIMIT_LOCK = threading.Lock()
_WHITE = (255, 255, 255)
# PIL's bomb warning only fires for images over our own limit, which are refused anyway.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def open_rgb(
    source: str | Path | bytes, *, max_pixels: int | None = None, max_bytes: int | None = None
) -> Image.Image:
    """Decode ``source`` completely, turned upright by its EXIF orientation, as a new RGB image.

    Raises :class:`ImageDecodeError` (naming the file) for a missing, empty, truncated or
    non-image file, for anything but a regular file (a FIFO, a device, a folder), for files
    over ``max_bytes`` (default :data:`~losa_cache.data.opener.DEFAULT_MAX_FILE_BYTES`) and
    for images over ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`): the
    ``--max-file-bytes`` and ``--max-pixels`` options of ``extract`` and ``predict``.
    """
    name, data = _read(source, DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    buffer = io.BytesIO(data)
    try:
        with _pil_guard(limit), Image.open(buffer) as im:
            _check_pixels(name, im, limit)
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(name, f"{err}; {_RAISE_LIMIT}") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad input
        # PIL names the buffer it was given ("<_io.BytesIO object at 0x...>"): the error
        # names the file already
        reason = str(err).replace(f" {buffer!r}", "").replace(repr(buffer), "the file")
        raise ImageDecodeError(name, f"{type(err).__name__}: {reason}") from err


@contextlib.contextmanager
def _pil_guard(limit: int) -> Iterator[None]:
    """Let :func:`_check_pixels` be the one size guard.

    PIL refuses twice ``Image.MAX_IMAGE_PIXELS`` at open time, before our check could name
    the option; a limit above PIL's is lifted for this open only.
    """
    if Image.MAX_IMAGE_PIXELS is None or limit <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PIL_LIMIT_LOCK:
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _read(source: str | Path | bytes, max_bytes: int) -> tuple[str, bytes]:
    """Read the raw bytes first (regular files, bounded: data/opener.py) so missing, empty,
    special and oversized files get their own clear message."""
    if isinstance(source, bytes | bytearray | memoryview):
        name, data = "<bytes>", bytes(source)
    else:
        name = str(source)
        try:
            data = read_regular(source, max_bytes)
        except FileRefused as err:
            raise ImageDecodeError(name, err.reason) from err
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return name, data


def _check_pixels(name: str, im: Image.Image, limit: int) -> None:
    """Refuse huge images before decoding them (memory), with a message saying how to allow."""
    width, height = im.size
    if width * height > limit:
        raise ImageDecodeError(
            name,
            f"{width}x{height} = {width * height:,} pixels is over the limit of {limit:,}; "
            f"{_RAISE_LIMIT}",
        )


def to_rgb(im: Image.Image) -> Image.Image:
    """Map any PIL mode to RGB: alpha is composited onto white, high-bit-depth data scaled."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in _ALPHA_MODES or (im.mode in {"L", "RGB"} and "transparency" in im.info):
        return _composite_on_white(im.convert("RGBA"))
    if im.mode in _SIXTEEN_BIT or im.mode in {"I", "F"}:
        return Image.fromarray(_to_uint8(im)).convert("RGB")
    return im.convert("RGB")  # RGB (a copy), L, 1, CMYK, YCbCr, LAB, HSV


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Transparent pixels become white (what a viewer shows), not the black of a plain drop."""
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_uint8(im: Image.Image) -> np.ndarray:
    """Scale one-channel high-bit-depth data to 0..255 by its nominal range.

    16-bit modes use the full 0..65535 range; 32-bit int and float data use 0..255, 0..65535
    or 0..1 when they fit (the usual conventions), else their own min..max.
    """
    a = np.nan_to_num(np.asarray(im, dtype=np.float64))
    if im.mode in _SIXTEEN_BIT:
        return np.round(a / 257.0).astype(np.uint8)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0
    else:
        scaled = (a - lo) * (255.0 / (hi - lo))
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
