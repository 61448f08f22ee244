"""Source decoding: documented conversions to RGB uint8, and rejects with reasons."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dutrain.io.images import Rejected, check_size, decode_image

BIG = 10**8


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_rgb16(a: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h pixels (what a decompression bomb looks like)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (20, 30), dtype=np.uint8)


def test_rgb_passes_unchanged():
    out, note = decode_image(encode(Image.fromarray(RGB)), BIG)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and note == ""
    np.testing.assert_array_equal(out, RGB)


def test_gray_is_replicated():
    out, note = decode_image(encode(Image.fromarray(GRAY)), BIG)
    assert note == "gray->rgb"
    np.testing.assert_array_equal(out, np.repeat(GRAY[:, :, None], 3, axis=2))


def test_16bit_gray_keeps_high_byte():
    a = RNG.integers(0, 65536, (20, 30)).astype(np.uint16)
    out, note = decode_image(encode(Image.fromarray(a)), BIG)
    assert note == "16-bit->8-bit"
    np.testing.assert_array_equal(out[:, :, 1], (a >> 8).astype(np.uint8))


def test_48bit_rgb_keeps_high_byte():
    a = RNG.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    out, _ = decode_image(png_rgb16(a), BIG)
    np.testing.assert_array_equal(out, (a >> 8).astype(np.uint8))


def test_rgba_composited_on_white():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = 0
    a[0, 0, 3] = 255
    out, note = decode_image(encode(Image.fromarray(a)), BIG)
    assert note == "alpha->rgb on white"
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency():
    p = Image.fromarray(RGB).convert("P")
    out, note = decode_image(encode(p), BIG)
    assert note == "palette->rgb"
    np.testing.assert_array_equal(out, np.asarray(p.convert("RGB")))
    out, note = decode_image(encode(p, transparency=0), BIG)
    assert note == "palette+alpha->rgb on white" and out.shape == (20, 30, 3)


def test_cmyk_jpeg_converted():
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    out, note = decode_image(encode(im, "JPEG", quality=95), BIG)
    assert note == "cmyk->rgb"
    assert out.shape == (16, 16, 3) and out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_exif_orientation_applied():
    im = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out, _ = decode_image(encode(im, "JPEG", exif=exif, quality=95), BIG)
    assert out.shape == (30, 20, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not an image"),
    (encode(Image.fromarray(RGB))[:200], "corrupt or truncated"),
    (png_header_only(30000, 30000), "decompression-bomb guard"),
])
def test_bad_bytes_rejected_with_reason(data, reason):
    with pytest.raises(Rejected, match=reason):
        decode_image(data, BIG)


def test_float_tiff_rejected():
    im = Image.fromarray(RNG.random((8, 8)).astype(np.float32))
    with pytest.raises(Rejected, match="unsupported image mode 'F'"):
        decode_image(encode(im, "TIFF"), BIG)


def test_too_small_rejected_not_upscaled():
    check_size(np.zeros((64, 64, 3), np.uint8), 64)
    with pytest.raises(Rejected, match="too small: 80x40 < image_size 64"):
        check_size(np.zeros((40, 80, 3), np.uint8), 64)
