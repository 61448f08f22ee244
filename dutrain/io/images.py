"""Clean-image decoding with documented conversions; anything else is a reject with a reason.

Every source image becomes RGB uint8 H×W×3 by these rules (docs/generate.md repeats them):
- EXIF orientation is applied (the crop is what a viewer sees);
- 16-bit (PNG/TIFF ``I;16*``, ``I``) keeps the high byte (``v >> 8``), Pillow's own rule for
  48-bit RGB PNGs, which it already decodes to 8-bit RGB;
- grayscale (``1``, ``L``) is replicated to three channels;
- palette (``P``) expands to RGB, or to RGBA when it has a transparent entry;
- alpha (``RGBA``, ``LA``, ``PA``) is composited on white, the rule of `dutrain.degrade` for RGBA;
- CMYK, YCbCr, LAB and HSV go through Pillow's ``convert("RGB")`` (no ICC colour management);
- multi-frame files (GIF, WebP, TIFF) use their first frame.

Rejected, never converted: empty files, bytes Pillow cannot identify (non-images with image
extensions), truncated or corrupt data, floating-point images (mode ``F``), images with more than
`max_pixels` pixels (decompression-bomb guard, checked from the header before decoding), and
images smaller than the crop in either side. Smaller images are not upscaled: interpolation blur
would be an unannotated degradation. File names that are not valid UTF-8 are rejected by
`generate` (ids are text); `printable_name` shows them with ``\\xNN`` escapes.

Every verb that reads a user's image file (`generate` via `dutrain.data.sources`, `restore`)
decodes it here, so the same file gives the same pixels everywhere.
"""

from __future__ import annotations

import errno
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dutrain.degrade import to_rgb_uint8


class Rejected(Exception):
    """A source that cannot become a clean crop; the message is the reason written to the card."""


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_VIA_CONVERT = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_array(im: Image.Image) -> tuple[np.ndarray, str]:
    """(RGB uint8 array, conversion applied or '') of a loaded Pillow image."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im), ""
    if mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.int64)
        return to_rgb_uint8((np.clip(a, 0, 65535) >> 8).astype(np.uint8)), "16-bit->8-bit"
    if mode in ("1", "L"):
        return to_rgb_uint8(np.asarray(im.convert("L"))), "gray->rgb"
    if mode == "P":
        if "transparency" in im.info:
            return to_rgb_uint8(np.asarray(im.convert("RGBA"))), "palette+alpha->rgb on white"
        return np.asarray(im.convert("RGB")), "palette->rgb"
    if mode in _ALPHA:
        return to_rgb_uint8(np.asarray(im.convert("RGBA"))), "alpha->rgb on white"
    if mode in _VIA_CONVERT:
        return np.asarray(im.convert("RGB")), f"{mode.lower()}->rgb"
    raise Rejected(f"unsupported image mode {mode!r} (allowed: 8/16-bit gray, palette, RGB, "
                   f"RGBA, CMYK, YCbCr, LAB, HSV)")


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Encoded image bytes → (RGB uint8 H×W×3, conversion note); raises Rejected."""
    if not data:
        raise Rejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # our own pixel check below replaces Pillow's warning; its hard error stays as a
            # backstop
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise Rejected(f"decompression-bomb guard: {w}x{h} = {w * h} pixels > "
                               f"max_pixels {max_pixels}")
            im.load()
            im = ImageOps.exif_transpose(im)
            arr, note = _to_array(im)
    except Rejected:
        raise
    except UnidentifiedImageError:
        raise Rejected("not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise Rejected(f"decompression-bomb guard: {exc}") from None
    except Exception as exc:  # truncated or corrupt data surfaces as many exception types
        raise Rejected(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None
    return np.ascontiguousarray(arr), note


def check_size(image: np.ndarray, size: int) -> None:
    h, w = image.shape[:2]
    if h < size or w < size:
        raise Rejected(f"too small: {w}x{h} < image_size {size} (images are not upscaled)")


def is_text(name: str) -> bool:
    """False for a file name with bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """A file name as valid text: undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace") if not is_text(name) else name


#: read errors that a retry cannot fix
PERMANENT_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP,
                    errno.ENOTDIR, errno.ENAMETOOLONG)


def read_local(path: str | os.PathLike[str]) -> bytes:
    """A local file's bytes; any OS error is a Rejected naming it (no retry: local)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise Rejected(f"cannot read: {exc.strerror or type(exc).__name__}") from None


def load_image_file(path: str | os.PathLike[str], max_pixels: int) -> tuple[np.ndarray, str]:
    """A local image file → (RGB uint8 H×W×3, conversion note); raises Rejected with the reason."""
    return decode_image(read_local(path), max_pixels)
