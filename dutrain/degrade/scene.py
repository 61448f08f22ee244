"""Scene operators (stages 1-2): haze and rain.

haze: depth d(y, x) = 1 - y / (H - 1) (far at the top; d = 1 for a one-row image),
t = exp(-beta * d), I = J * t + A * (1 - t).

rain: n = round(density * H * W / 10_000) streaks (Python round, half to even). Streak centres
come from the operator's rng: ``ys = rng.integers(0, H, n)`` then ``xs = rng.integers(0, W, n)``.
Each streak is the same anti-aliased segment of `length` px through its centre, direction
(dx, dy) = (sin angle, cos angle) (y down: a positive angle leans the bottom to the right);
stamp weight = max(0, 1 - distance from the pixel centre to the segment), the segment running
(length - 1) / 2 px each side of the centre. S = min(1, sum of stamps) (parts outside the image
are dropped), I = J + (1 - J) * 0.8 * S.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RAIN_OPACITY = 0.8


def haze(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    h = img.shape[0]
    y = np.arange(h, dtype=np.float32)
    d = np.ones(h, np.float32) if h == 1 else np.float32(1) - y / np.float32(h - 1)
    t = np.exp(-np.float32(params["beta"]) * d)[:, None, None]
    a = np.float32(params["airlight"])
    return (img * t + a * (np.float32(1) - t)).astype(np.float32)


def segment_stamp(length: float, dx: float, dy: float) -> np.ndarray:
    """Anti-aliased segment of `length` px centred in an odd square, unit direction (dx, dy).

    Weight per pixel = max(0, 1 - distance from the pixel centre to the segment of half-length
    (length - 1) / 2). Shared by rain (unnormalized) and motion blur (normalized).
    """
    half = (float(length) - 1.0) / 2.0
    r = int(np.ceil(half)) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    along = np.clip(xx * dx + yy * dy, -half, half)
    dist = np.hypot(xx - along * dx, yy - along * dy)
    return np.clip(1.0 - dist, 0.0, 1.0)


def rain_mask(h: int, w: int, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    n = round(float(params["density"]) * h * w / 10_000)
    ys = rng.integers(0, h, size=n)
    xs = rng.integers(0, w, size=n)
    a = np.deg2rad(float(params["angle"]))
    stamp = segment_stamp(params["length"], np.sin(a), np.cos(a))
    r = stamp.shape[0] // 2
    oy, ox = np.nonzero(stamp)
    wts = stamp[oy, ox]
    py = ys[:, None] + (oy - r)[None, :]
    px = xs[:, None] + (ox - r)[None, :]
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    flat = (py * w + px)[inside]
    s = np.bincount(flat, weights=np.broadcast_to(wts, py.shape)[inside], minlength=h * w)
    return np.minimum(s, 1.0).reshape(h, w).astype(np.float32)


def rain(img: np.ndarray, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    s = rain_mask(img.shape[0], img.shape[1], params, rng)[:, :, None]
    return (img + (np.float32(1) - img) * np.float32(RAIN_OPACITY) * s).astype(np.float32)
