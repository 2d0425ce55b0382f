"""open_rgb: every mode to RGB at the same size, every bad input an ImageDecodeError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from losa_cache.data import ImageDecodeError, open_rgb
from losa_cache.data.decode import to_rgb

SIZE = (9, 7)  # odd sizes catch width/height swaps


def _image(mode: str) -> Image.Image:
    """A SIZE image in ``mode`` with non-trivial content."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(np.full((7, 9), 40_000, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(np.arange(63, dtype=np.int32).reshape(7, 9) * 1000)
    if mode == "F":
        return Image.fromarray(np.linspace(0, 1, 63, dtype=np.float32).reshape(7, 9))
    if mode == "P+transparency":
        im = rgb.convert("P")
        im.info["transparency"] = 0
        return im
    return rgb.convert(mode)


def _pixels(im: Image.Image) -> list[list[int]]:
    return np.asarray(im).reshape(-1, 3).tolist()


# (mode, a file format able to store it)
CASES = [
    ("RGB", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P+transparency", "PNG"),
    ("RGBA", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("I;16", "PNG"), ("I", "TIFF"),
    ("F", "TIFF"), ("1", "PNG"), ("L", "JPEG"),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "fmt"), CASES)
def test_every_mode_decodes_to_rgb_of_same_size(tmp_path: Path, mode: str, fmt: str) -> None:
    path = tmp_path / f"img.{fmt.lower()}"
    _image(mode).save(path, format=fmt, **({"transparency": 0} if "transp" in mode else {}))
    with Image.open(path) as check:  # the file really holds the mode under test
        assert check.mode == mode.split("+")[0]
    out = open_rgb(path)
    assert (out.mode, out.size) == ("RGB", SIZE)


def test_alpha_is_composited_on_white() -> None:
    im = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    im.putpixel((1, 0), (10, 20, 30, 0))
    assert _pixels(to_rgb(im)) == [[10, 20, 30], [255, 255, 255]]


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png", transparency=0)
    assert _pixels(open_rgb(tmp_path / "p.png")) == [[255, 255, 255], [200, 0, 0]]


def test_high_bit_depth_is_scaled_not_clipped() -> None:
    sixteen = Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.uint16))
    assert [p[0] for p in _pixels(to_rgb(sixteen))] == [0, 255, 128]
    unit_float = Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32))
    assert [p[0] for p in _pixels(to_rgb(unit_float))] == [0, 255]


def test_cmyk_jpeg_keeps_colour(tmp_path: Path) -> None:
    Image.new("RGB", SIZE, (200, 40, 40)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    r, g, b = open_rgb(tmp_path / "c.jpg").getpixel((4, 3))
    assert r > 150 and g < 90 and b < 90


def test_bytes_and_str_sources(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", SIZE, 77).save(buf, format="PNG")
    (tmp_path / "g.png").write_bytes(buf.getvalue())
    assert open_rgb(buf.getvalue()).getpixel((0, 0)) == (77, 77, 77)
    assert open_rgb(str(tmp_path / "g.png")).size == SIZE


def _truncated(tmp_path: Path, fmt: str) -> Path:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_raises_naming_it(tmp_path: Path, fmt: str) -> None:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # the guarantee rests on PIL's default
    path = _truncated(tmp_path, fmt)
    with pytest.raises(ImageDecodeError, match="cut") as info:
        open_rgb(path)
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"hello, not an image", "cannot identify"), (b"", "empty file"), (None, "not found")],
)
def test_bad_files_raise_naming_the_file(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        open_rgb(path)
    assert "bad.jpg" in str(info.value)


def test_size_guard_names_the_option_that_raises_it(tmp_path: Path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(
        ImageDecodeError, match=r"10,000 pixels is over the limit of 5,000.*--max-pixels"
    ) as info:
        open_rgb(tmp_path / "big.png", max_pixels=5_000)
    assert "big.png" in str(info.value)
    assert open_rgb(tmp_path / "big.png", max_pixels=10_000).size == (100, 100)


def test_limit_above_pils_own_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL refuses 2x its MAX_IMAGE_PIXELS at open; a larger --max-pixels must still decode."""
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    assert open_rgb(tmp_path / "big.png", max_pixels=20_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1_000  # lifted for that open only
    with pytest.raises(ImageDecodeError, match="over the limit of 9,999"):
        open_rgb(tmp_path / "big.png", max_pixels=9_999)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    """A phone photo stored sideways with an EXIF tag decodes upright, as viewers show it."""
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[:3, :4] = 255  # a white top-left quarter, to see where it lands
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    stored.save(path, exif=exif)
    im = open_rgb(path)
    expected = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert im.size == ((8, 6) if orientation == 3 else (6, 8))
    assert np.array_equal(np.asarray(im), np.asarray(expected))
    assert not np.array_equal(np.asarray(im)[:3, :4], np.asarray(stored)[:3, :4])
