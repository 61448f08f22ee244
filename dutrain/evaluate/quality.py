"""Full-reference image quality (PSNR, SSIM on uint8 RGB): one definition for restoration's
metrics and for how visible a degradation is in an evaluated image."""

from __future__ import annotations

import numpy as np

#: PSNR of an exact copy, so that means over images stay finite
PSNR_CAP = 60.0


def psnr(ref: np.ndarray, img: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio
    if np.array_equal(ref, img):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(ref, img, data_range=255)))


def ssim(ref: np.ndarray, img: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    return float(structural_similarity(ref, img, channel_axis=2, data_range=255))
