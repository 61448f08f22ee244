"""Exposure operator (stage 4): low_light, I = exposure * J ** gamma."""

from __future__ import annotations

from typing import Any

import numpy as np


def low_light(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    out = np.float32(params["exposure"]) * np.power(img, np.float32(params["gamma"]))
    return out.astype(np.float32)
