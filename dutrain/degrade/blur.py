"""Optics operators (stage 3): Gaussian, motion and defocus blur. Border mode "reflect".

gaussian_blur: separable kernel exp(-x^2 / (2 sigma^2)), x in [-r, r], r = int(3 * sigma + 0.5)
(scipy.ndimage.gaussian_filter with truncate=3), normalized; rows then columns.
motion_blur: the anti-aliased segment of `scene.segment_stamp` with direction
(cos angle, -sin angle) (0 deg = horizontal, 90 deg = vertical, y down), normalized to sum 1.
defocus_blur: anti-aliased disk, weight = clip(radius + 0.5 - |(dx, dy)|, 0, 1), normalized.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._image import correlate_taps
from .scene import segment_stamp


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    r = int(3.0 * float(sigma) + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 / float(sigma) ** 2 * x * x)
    return k / k.sum()


def motion_kernel(length: float, angle: float) -> np.ndarray:
    a = np.deg2rad(float(angle))
    k = segment_stamp(length, np.cos(a), -np.sin(a))
    return k / k.sum()


def disk_kernel(radius: float) -> np.ndarray:
    r = int(np.ceil(float(radius) + 0.5))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    k = np.clip(float(radius) + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    k = gaussian_kernel1d(params["sigma"])
    row = np.zeros((k.size, k.size))
    row[k.size // 2] = k  # a 1-D kernel as the middle row of a square: rows, then columns
    return correlate_taps(correlate_taps(img, row), row.T)


def motion_blur(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    return correlate_taps(img, motion_kernel(params["length"], params["angle"]))


def defocus_blur(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    return correlate_taps(img, disk_kernel(params["radius"]))
