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


def jpeg_bytes(image_uint8: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image_uint8).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    data = jpeg_bytes(to_uint8(img), params["quality"])
    with Image.open(io.BytesIO(data)) as im:
        decoded = np.asarray(im.convert("RGB"))
    return to_float(decoded)
