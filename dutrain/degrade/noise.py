"""Sensor operators (stage 6): Gaussian and Poisson noise, drawn from the operator's rng.

gaussian_noise: I = clip(J + rng.normal(0, sigma / 255, (H, W, 3)), 0, 1), computed in float64.
poisson_noise: I = clip(rng.poisson(peak * J) / peak, 0, 1), computed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def gaussian_noise(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    n = rng.normal(0.0, float(params["sigma"]) / 255.0, size=img.shape)
    return np.clip(img + n, 0, 1).astype(np.float32)


def poisson_noise(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    peak = float(params["peak"])
    counts = rng.poisson(peak * img.astype(np.float64))
    return np.clip(counts / peak, 0, 1).astype(np.float32)
