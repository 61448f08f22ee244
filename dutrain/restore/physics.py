"""The dataset's linear forward physics as explicit operators (docs/design.md §3), for inversion.

- `psf(type, params)`: the blur kernel of an annotation, built by the degradation library's own
  kernel builders (`dutrain.degrade.blur`), so restoration inverts exactly what was applied.
- `resize_matrix(n_in, n_out)`: the matrix of Pillow's 1-D bicubic resize on float ("F") images,
  read off by resizing an identity image. Pillow resizes each axis with the same 1-D filter, so
  the dataset's ``downsample`` is, per channel, ``X -> Mh @ X @ Mw.T`` with
  ``M = resize_matrix(m, n) @ resize_matrix(n, m)``, ``m = max(1, round(n * scale))`` — exact up
  to float32 rounding, except where the library clips bicubic overshoot to [0, 1].
- `otf(kernel, shape)`: transfer function of the periodic correlation with `kernel`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np
from PIL import Image

from dutrain.degrade.blur import disk_kernel, gaussian_kernel1d, motion_kernel

BLUR_TYPES = ("gaussian_blur", "motion_blur", "defocus_blur")


def psf(type_name: str, params: Mapping[str, Any]) -> np.ndarray:
    """The 2-D correlation kernel (odd square, sums to 1) the library applies for a blur type."""
    if type_name == "gaussian_blur":
        g = gaussian_kernel1d(params["sigma"])
        return np.outer(g, g)
    if type_name == "motion_blur":
        return motion_kernel(params["length"], params["angle"])
    if type_name == "defocus_blur":
        return disk_kernel(params["radius"])
    raise ValueError(f"no PSF for type {type_name!r}; blur types: {', '.join(BLUR_TYPES)}")


@lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of Pillow's BICUBIC resize along one axis of a mode "F" image."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32))
    out = np.asarray(eye.resize((n_in, n_out), Image.Resampling.BICUBIC), dtype=np.float64)
    out.setflags(write=False)
    return out


def small_size(n: int, scale: float) -> int:
    """The library's down-sampled length of an axis of length n (Python round, half to even)."""
    return max(1, round(n * float(scale)))


def downsample_matrix(n: int, scale: float) -> np.ndarray:
    """(n, n) matrix of the dataset's down-then-up resize along one axis (rank small_size)."""
    m = small_size(n, scale)
    return resize_matrix(m, n) @ resize_matrix(n, m)


def otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """FFT multiplier K of ``y = correlate(x, kernel)`` on a periodic grid: Y = K · X."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.shape[0] > shape[0] or k.shape[1] > shape[1]:
        raise ValueError(f"kernel {k.shape} is larger than the image {shape}")
    p = np.zeros(shape)
    p[:k.shape[0], :k.shape[1]] = k
    p = np.roll(p, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1))
    return np.conj(np.fft.fft2(p))  # correlation with a real kernel: conjugate of its spectrum
