"""Sampling operator (stage 5): downsample.

Each channel, as a Pillow mode "F" (float32) image, is resized with Resampling.BICUBIC to
(max(1, round(W * scale)), max(1, round(H * scale))) (Python round, half to even), clipped to
[0, 1] (bicubic overshoot; a small image holds valid intensities, as Pillow's uint8 path does),
then back to (W, H) the same way and clipped again. Working on floats keeps the chain's single
quantization; Pillow's uint8 RGB resize, which rounds and clips after each 1-D pass, differs from
it by well under 1 DN on average (a few DN at worst, on sharp edges).
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
        low = np.clip(np.asarray(im.resize(small, bicubic), dtype=np.float32), 0, 1)
        chans.append(np.asarray(Image.fromarray(low).resize((w, h), bicubic), dtype=np.float32))
    return np.clip(np.stack(chans, axis=2), 0, 1)
