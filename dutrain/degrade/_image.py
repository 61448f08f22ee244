"""Image conversions and the shared filtering primitive of the operators.

Conventions (a contract: outside programs re-apply annotations with them):
- input: ``uint8`` RGB, H x W x 3. Grayscale (H x W or H x W x 1) is replicated to three
  channels; RGBA is composited on white, ``rgb * a + 255 * (1 - a)`` with ``a = alpha / 255``,
  computed in float32 and rounded half to even. Anything else is a ValueError.
- float: ``J = uint8 / 255`` in float32; back: ``rint(clip(I, 0, 1) * 255)`` in float32
  (``np.rint`` rounds half to even).
- borders: scipy.ndimage mode ``"reflect"`` (d c b a | a b c d), i.e. numpy pad mode
  ``"symmetric"``.
"""

from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights of R, G, B (Y = 0.299 R + 0.587 G + 0.114 B), as JPEG uses
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

ALLOWED_INPUT = "uint8 array of shape HxW, HxWx1, HxWx3 or HxWx4 with H, W >= 1"


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """The RGB uint8 H x W x 3 image the chain works on (documented conversions above)."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy {ALLOWED_INPUT}; got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be a {ALLOWED_INPUT}; got dtype {image.dtype} "
                         f"(convert floats with np.rint(x * 255).astype(np.uint8))")
    if image.ndim == 2:
        image = image[:, :, None]
    if (image.ndim != 3 or image.shape[2] not in (1, 3, 4)
            or image.shape[0] < 1 or image.shape[1] < 1):
        raise ValueError(f"image must be a {ALLOWED_INPUT}; got shape {image.shape}")
    c = image.shape[2]
    if c == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if c == 4:
        a = image[:, :, 3:4].astype(np.float32) / np.float32(255)
        rgb = image[:, :, :3].astype(np.float32) * a + np.float32(255) * (np.float32(1) - a)
        return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8)
    return np.ascontiguousarray(image)


def to_float(image_uint8: np.ndarray) -> np.ndarray:
    return image_uint8.astype(np.float32) / np.float32(255)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantize float32 [0, 1] to uint8, rounding half to even (the chain does this once)."""
    x = np.clip(image.astype(np.float32, copy=False), 0, 1) * np.float32(255)
    return np.rint(x).astype(np.uint8)


def correlate_taps(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation of each channel with `kernel` (odd square), border mode reflect.

    Accumulates the non-zero taps in row-major order with elementwise float32 numpy ops, so the
    bytes do not depend on the machine's BLAS/FFT or compiler contractions.
    """
    k = kernel.shape[0]
    r = k // 2
    h, w = image.shape[:2]
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
    out = np.zeros_like(image, dtype=np.float32)
    tmp = np.empty_like(out)
    for dy, dx in zip(*np.nonzero(kernel)):
        np.multiply(padded[dy:dy + h, dx:dx + w], np.float32(kernel[dy, dx]), out=tmp)
        out += tmp
    return out
