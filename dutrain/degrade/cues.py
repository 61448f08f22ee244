"""Measured image cues that the chain of thought cites (docs/design.md §5).

All cues are computed on the uint8 RGB image (grey = BT.601 luma, 0-255 scale unless noted):
- ``hf_energy``: mean |4-neighbour Laplacian| of the grey image (DN); blur and down-sampling
  lower it, noise raises it.
- ``edge_width``: median, over strong edges, of local contrast / peak slope along x or y (px);
  about the 10-90 % width of an edge (a blurred step of sigma s gives ~2.5 s; a sharp step 1).
- ``noise``: Immerkær's estimate, sqrt(pi/2) * mean |I * M| / 6 with M the 3x3 Laplacian
  difference mask, per RGB channel over the flattest 80 % of pixels, averaged (DN, 0-255 scale).
- ``blockiness``: mean |step| across 8x8 block boundaries / mean |step| inside blocks (~1 for
  no blocking; JPEG raises it).
- ``dark_channel``: mean over pixels of the 7x7 minimum of min(R, G, B) (0-1); haze raises it.
- ``haze_gradient``: dark channel of the top third minus that of the bottom third (0-1).
- ``brightness``: mean luma (0-1); ``contrast``: std of luma (0-1); ``saturation``: mean
  (max - min) / max over RGB (0-1).
- ``streaks``: share of pixels (%) brighter than their 5x5 mean by more than 20 DN.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._image import LUMA_WEIGHTS, to_rgb_uint8

CUE_NAMES = ("hf_energy", "edge_width", "noise", "blockiness", "dark_channel", "haze_gradient",
             "brightness", "contrast", "saturation", "streaks")

_LUMA = np.array(LUMA_WEIGHTS, np.float32)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_EDGE_WINDOW = 13  # the contrast of an edge is read within +-6 px of it


def _edge_widths(g: np.ndarray, axis: int) -> np.ndarray:
    """contrast / peak slope at local maxima of |forward difference| along `axis`."""
    d = np.abs(np.diff(g, axis=axis))
    if d.shape[axis] < 3:
        return np.empty(0, np.float32)
    hi = ndi.maximum_filter1d(g, _EDGE_WINDOW, axis=axis, mode="nearest")
    lo = ndi.minimum_filter1d(g, _EDGE_WINDOW, axis=axis, mode="nearest")
    contrast = np.take(hi - lo, np.arange(d.shape[axis]), axis=axis)
    peak = d == ndi.maximum_filter1d(d, 3, axis=axis, mode="nearest")
    strong = peak & (contrast >= 20.0) & (d >= max(4.0, float(np.percentile(d, 95))))
    return contrast[strong] / d[strong]


def _blockiness(g: np.ndarray) -> float:
    ratios = []
    for axis in (0, 1):
        d = np.abs(np.diff(g, axis=axis))
        n = d.shape[axis]
        if n < 9:
            continue
        idx = np.arange(n)
        boundary = np.take(d, idx[idx % 8 == 7], axis=axis).mean()
        inside = np.take(d, idx[idx % 8 != 7], axis=axis).mean()
        ratios.append((boundary + 1e-3) / (inside + 1e-3))
    return float(np.mean(ratios)) if ratios else 1.0


def _noise(rgb: np.ndarray, g: np.ndarray) -> float:
    h, w = g.shape
    if h < 3 or w < 3:
        return 0.0
    gy = ndi.sobel(g, axis=0)[1:-1, 1:-1]
    gx = ndi.sobel(g, axis=1)[1:-1, 1:-1]
    flat = np.hypot(gx, gy)
    flat = flat <= np.percentile(flat, 80)
    sig = [np.abs(ndi.correlate(rgb[:, :, c], _IMMERKAER)[1:-1, 1:-1][flat]).mean()
           for c in range(3)]
    return float(np.sqrt(np.pi / 2) / 6 * np.mean(sig))


def measure_cues(image_uint8_hwc: np.ndarray) -> dict[str, float]:
    """The cues of this module's docstring, as plain floats (see `CUE_NAMES`)."""
    rgb = to_rgb_uint8(image_uint8_hwc).astype(np.float32)
    g = rgb @ _LUMA
    h = g.shape[0]
    widths = np.concatenate([_edge_widths(g, 0), _edge_widths(g, 1)])
    mn = rgb.min(axis=2)
    mx = rgb.max(axis=2)
    dark = ndi.minimum_filter(mn, 7, mode="nearest") / 255.0
    third = max(1, h // 3)
    local_mean = ndi.uniform_filter(g, 5, mode="reflect")
    cues = {
        "hf_energy": float(np.abs(ndi.laplace(g, mode="reflect")).mean()),
        "edge_width": float(np.median(widths)) if widths.size else 0.0,
        "noise": _noise(rgb, g),
        "blockiness": _blockiness(g),
        "dark_channel": float(dark.mean()),
        "haze_gradient": float(dark[:third].mean() - dark[h - third:].mean()),
        "brightness": float(g.mean() / 255.0),
        "contrast": float(g.std() / 255.0),
        "saturation": float(((mx - mn) / np.maximum(mx, 1.0)).mean()),
        "streaks": float(100.0 * (g - local_mean > 20.0).mean()),
    }
    return cues
