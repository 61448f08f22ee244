"""Codec operator (stage 7): JPEG.

The float image is quantized (`_image.to_uint8`, half to even), encoded by Pillow as JPEG at
`quality` with Pillow's default subsampling and settings, decoded, and returned as float
(decoded / 255), which the chain's final quantization maps back to the decoded bytes exactly.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from ._image import to_float, to_uint8

#: ITU-T T.81 Annex K.1 luminance quantization table, natural (row-major) order
_BASE_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)


def libjpeg_luma_table(quality: int) -> np.ndarray:
    """The 8x8 luminance quantization table (natural order) libjpeg, and so Pillow, uses at
    `quality`: jpeg_quality_scaling's integer rule (5000 // q below 50, 200 - 2q from 50 on),
    then (base * scale + 50) // 100 clipped to the baseline range [1, 255].

    >>> libjpeg_luma_table(50)[0, :4].tolist(), libjpeg_luma_table(90)[0, :4].tolist()
    ([16, 11, 10, 16], [3, 2, 2, 3])
    """
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((_BASE_LUMA * scale + 50) // 100, 1, 255)


def jpeg_bytes(image_uint8: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_uint8).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    data = jpeg_bytes(to_uint8(img), params["quality"])
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"))
    return to_float(decoded)
