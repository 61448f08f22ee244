"""Sampling operator (stage 5): downsample.

Each channel, as a Pillow mode "F" (float32) image, is resized with Resampling.BICUBIC to
(max(1, round(W * scale)), max(1, round(H * scale))) (Python round, half to even), then back to
(W, H) the same way; bicubic overshoot is clipped to [0, 1]. Working on floats keeps the chain's
single quantization; on uint8 input it matches Pillow's RGB resize within 1 DN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def downsample(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    s = float(params["scale"])
    small = (max(1, round(w * s)), max(1, round(h * s)))
    bicubic = Image.Resampling.BICUBIC
    chans = []
    for c in range(img.shape[2]):
        im = Image.fromarray(np.ascontiguousarray(img[:, :, c], dtype=np.float32))
        chans.append(np.asarray(im.resize(small, bicubic).resize((w, h), bicubic), dtype=np.float32))
    return np.clip(np.stack(chans, axis=2), 0, 1)
