"""Classical restoration driven by an annotation: the inverse of each stage, in reverse order.

The annotation says which inverse problem to solve; each step below is a well-known, non-learned
operator whose parameters come from the annotation (docs/design.md §3 gives the forward physics):

- jpeg: re-application of JPEG at the annotated quality on the 64 shifts of the 8×8 grid,
  averaged (Nosratinia 2001), blended with the input by a weight that falls from 0.6
  (quality ≤ 50) to 0 (quality 95).
- gaussian_noise: non-local means (skimage, fast mode, 5×5 patches, 13×13 search) with
  sigma = the annotated sigma, h = 0.7·sigma.
- poisson_noise: Anscombe transform of the photon counts (peak·I), non-local means at unit
  noise, Mäkitalo–Foi closed-form unbiased inverse.
- downsample: the down-then-up resize as the matrix M = U·D per axis
  (`physics.downsample_matrix`); recover the small image z = U⁺y, then the smallest
  correction of y whose down-sampling is z: x = y + Dᵀ(DDᵀ + λI)⁻¹(z − Dy), λ = 0.05.
- low_light: exact inversion J = clip(I / exposure, 0, 1)^(1/gamma).
- gaussian/motion/defocus blur: Wiener-type deconvolution in the Fourier domain with the PSF
  rebuilt from the annotation (`physics.psf`), the image mirrored at the borders (the
  library's "reflect" mode), regulariser λ_flat + λ_lap·abs(Laplacian)², λ_flat raised by the
  estimated residual noise.
- rain: streak detection along the annotated angle: background B = median of 5 samples across
  the streak direction; streak strength S from I = B + (1 − B)·0.8·S; a matched filter of the
  annotated length along the streak keeps the expected streak area (from density and length);
  those pixels are inverted, J = (I − 0.8·S)/(1 − 0.8·S).
- haze: inversion of the scattering model with the dataset's depth,
  t = exp(−beta·(1 − y/(H−1))), J = (I − A(1 − t)) / max(t, 0.02).

Each step also carries an estimate of the error std left in the image (quantization at first,
then JPEG or denoising residue, amplified by the exposure and haze inversions), which sets the
deconvolution's regularisation. Constants were chosen on skimage's built-in images at 128 px
(docs/restore.md); they are written next to the operator that uses them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from dutrain.degrade import to_float, to_rgb_uint8, to_uint8
from dutrain.degrade.codec import jpeg_bytes, libjpeg_luma_table
from dutrain.degrade.scene import RAIN_OPACITY, segment_stamp
from dutrain.schema import TAXONOMY, Annotation, canonicalize

from .physics import BLUR_TYPES, otf, psf, resize_matrix, small_size

#: std (0-1 scale) of uint8 quantization, the error every stored observation carries
QUANT_SIGMA = 1.0 / 255.0 / np.sqrt(12.0)


@dataclass
class State:
    """What a step knows besides the image: an estimate of the error std left in it."""

    sigma: float = QUANT_SIGMA


Inverse = Callable[[np.ndarray, Mapping[str, Any], State], np.ndarray]


# ------------------------------------------------------------------------------------- codec

def jpeg_error_sigma(quality: int) -> float:
    """Rough std (0-1 scale) of the JPEG error: 0.9·sqrt(mean luma step) DN, fitted on built-in
    images (RMSE 11.6 / 7.4 / 2.6 DN at quality 15 / 50 / 95)."""
    return 0.9 * float(np.sqrt(libjpeg_luma_table(quality).mean())) / 255.0


def _jpeg_round_trip(image_uint8: np.ndarray, quality: int) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg_bytes(image_uint8, quality))) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_reapply(image_uint8: np.ndarray, quality: int) -> np.ndarray:
    """Nosratinia's deblocking: the mean over the 64 grid shifts of shift → JPEG → unshift."""
    h, w = image_uint8.shape[:2]
    acc = np.zeros(image_uint8.shape, np.float64)
    for dy in range(8):
        for dx in range(8):
            padded = np.pad(image_uint8, ((dy, 8 - dy), (dx, 8 - dx), (0, 0)), mode="symmetric")
            acc += _jpeg_round_trip(padded, quality)[dy:dy + h, dx:dx + w]
    return (acc / (64.0 * 255.0)).astype(np.float32)


def inverse_jpeg(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    q = int(p["quality"])
    # averaging recompressed shifts gains ~0.3-0.5 dB at low and mid quality but blurs fine
    # texture a high-quality file still holds, so its weight falls to 0 at quality 95
    alpha = np.float32(0.6 * min(1.0, max(0.0, (95 - q) / 45)))
    st.sigma = max(st.sigma, jpeg_error_sigma(q))
    if alpha == 0:
        return x
    return x + alpha * (jpeg_reapply(to_uint8(x), q) - x)


# ------------------------------------------------------------------------------------- noise

def _nlm(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means
    return denoise_nl_means(x, h=0.7 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                            patch_distance=6, channel_axis=2).astype(np.float32)


def inverse_gaussian_noise(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    sigma = max(float(p["sigma"]) / 255.0, st.sigma)
    st.sigma = 0.4 * sigma  # NL-means leaves roughly 30-45 % of the noise std (measured)
    return _nlm(x, sigma)


def anscombe(counts: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.maximum(counts, 0.0) + 3.0 / 8.0)


def inverse_anscombe(d: np.ndarray) -> np.ndarray:
    """Mäkitalo & Foi (2011) closed-form approximation of the exact unbiased inverse."""
    d = np.maximum(d, 0.8)
    s = np.sqrt(1.5)
    out = 0.25 * d ** 2 + 0.25 * s / d - 11.0 / 8.0 / d ** 2 + 5.0 / 8.0 * s / d ** 3 - 0.125
    return np.maximum(out, 0.0)


def inverse_poisson_noise(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    peak = float(p["peak"])
    top = float(anscombe(np.float64(peak)))  # scales the transformed image into [0, 1]
    z = anscombe(x.astype(np.float64) * peak) / top
    den = _nlm(z.astype(np.float32), 1.0 / top).astype(np.float64) * top
    st.sigma = 0.4 * float(np.sqrt(max(float(x.mean()), 1e-3) / peak))
    return (inverse_anscombe(den) / peak).astype(np.float32)


# ----------------------------------------------------------------------------------- sampling

#: Tikhonov weight of the back-projection (chosen on built-in images: 0.01-0.05 equally good)
DOWNSAMPLE_LAMBDA = 0.05


@lru_cache(maxsize=32)
def _downsample_inverse(n: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U⁺, D, G) for one axis: y-space → small image, the down-sampler, and the regularised
    right inverse G = Dᵀ(DDᵀ + λI)⁻¹ of D."""
    m = small_size(n, scale)
    up, down = resize_matrix(m, n), resize_matrix(n, m)
    g = down.T @ np.linalg.inv(down @ down.T + DOWNSAMPLE_LAMBDA * np.eye(m))
    return np.linalg.pinv(up), down, g


def _sep(mh: np.ndarray, x: np.ndarray, mw: np.ndarray) -> np.ndarray:
    """Apply mh along rows and mw along columns of every channel: mh @ X @ mw.T."""
    return np.einsum("ij,jkc->ikc", mh, np.einsum("jkc,lk->jlc", x, mw))


def inverse_downsample(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    h, w = x.shape[:2]
    s = float(p["scale"])
    uph, dh, gh = _downsample_inverse(h, s)
    upw, dw, gw = _downsample_inverse(w, s)
    y = x.astype(np.float64)
    z = _sep(uph, y, upw)
    return (y + _sep(gh, z - _sep(dh, y, dw), gw)).astype(np.float32)


# ----------------------------------------------------------------------------------- exposure

def inverse_low_light(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    e, g = float(p["exposure"]), float(p["gamma"])
    base = np.clip(x.astype(np.float64) / e, 0.0, 1.0)
    # the error is amplified by the slope of the inverse curve (median over the image)
    slope = np.median(np.clip(base, 1e-3, 1.0) ** (1.0 / g - 1.0)) / (g * e)
    st.sigma *= float(slope)
    return (base ** (1.0 / g)).astype(np.float32)


# --------------------------------------------------------------------------------------- optics

_LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float64)
#: (flat, Laplacian) regularisers per blur type; a Gaussian PSF has no spectral zeros, motion
#: and disk PSFs do, and need a stronger flat term (chosen on built-in images)
DECONV_LAMBDA = {"gaussian_blur": (1e-3, 1e-3), "motion_blur": (1e-2, 1e-3),
                 "defocus_blur": (1e-2, 1e-3)}
#: weight of the residual noise variance in the flat regulariser (noise-to-signal ratio)
DECONV_NOISE_WEIGHT = 20.0


def deconvolve(x: np.ndarray, kernel: np.ndarray, lam_flat: float, lam_lap: float) -> np.ndarray:
    """X = (1 + λ_flat)·conj(K)·Y / (abs(K)² + λ_flat + λ_lap·abs(L)²) on the image mirrored by
    the kernel radius plus 8 px (the blur's "reflect" border), cropped back. The factor
    (1 + λ_flat) keeps the gain at 1 where the PSF passes everything (low frequencies), so a
    strong regulariser smooths without darkening."""
    pad = kernel.shape[0] // 2 + 8
    yp = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    k = otf(kernel, yp.shape[:2])
    lap = otf(_LAPLACIAN, yp.shape[:2])
    filt = (1.0 + lam_flat) * np.conj(k) / (np.abs(k) ** 2 + lam_flat + lam_lap * np.abs(lap) ** 2)
    out = np.fft.ifft2(np.fft.fft2(yp, axes=(0, 1)) * filt[..., None], axes=(0, 1)).real
    return out[pad:-pad, pad:-pad].astype(np.float32)


def _inverse_blur(type_name: str) -> Inverse:
    def inverse(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
        lam_flat, lam_lap = DECONV_LAMBDA[type_name]
        lam_flat += DECONV_NOISE_WEIGHT * st.sigma ** 2
        return deconvolve(x, psf(type_name, p), lam_flat, lam_lap)
    inverse.__name__ = f"inverse_{type_name}"
    return inverse


# ---------------------------------------------------------------------------------------- scene

def _shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    from scipy import ndimage
    return ndimage.shift(img, (dy, dx, 0), order=1, mode="reflect")


def rain_strength(x: np.ndarray, angle: float, half_width: int = 2) -> np.ndarray:
    """Per-pixel streak strength S in [0, 1] from I = B + (1 − B)·0.8·S, the background B being
    the median of 2·half_width + 1 samples across the streak direction."""
    a = np.deg2rad(float(angle))
    across = (-np.sin(a), np.cos(a))  # (dy, dx) perpendicular to the streak (sin a, cos a)
    stack = np.stack([_shift(x, t * across[0], t * across[1])
                      for t in range(-half_width, half_width + 1)])
    bg = np.median(stack, axis=0)
    s = (x - bg) / (np.float32(RAIN_OPACITY) * np.maximum(1 - bg, 1e-3))
    return np.clip(s, 0, 1).min(axis=2)  # streaks are grey: every channel rises


def inverse_rain(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    from scipy import ndimage
    a = np.deg2rad(float(p["angle"]))
    s = rain_strength(x, p["angle"])
    line = segment_stamp(p["length"], np.sin(a), np.cos(a))
    response = ndimage.correlate(s, line / line.sum(), mode="reflect")
    # keep the expected streak area: density streaks per 10k px, each ~2 px wide and `length` long
    share = min(1.0, float(p["density"]) * float(p["length"]) * 2.0 / 10_000)
    thresh = max(0.1, float(np.quantile(response, 1.0 - share)))
    mask = np.where(response > thresh, s, 0)[..., None] * np.float32(RAIN_OPACITY)
    return ((x - mask) / np.maximum(1 - mask, 1e-3)).astype(np.float32)


#: lower bound of the transmission in the haze inversion (exp(-3.5) = 0.03 is the least valid)
HAZE_T0 = 0.02


def transmission(h: int, beta: float) -> np.ndarray:
    """t(y) = exp(−beta·d), d = 1 − y/(H − 1) (d = 1 for a one-row image), shape (H, 1, 1)."""
    y = np.arange(h, dtype=np.float64)
    d = np.ones(h) if h == 1 else 1.0 - y / (h - 1)
    return np.exp(-float(beta) * d)[:, None, None]


def inverse_haze(x: np.ndarray, p: Mapping[str, Any], st: State) -> np.ndarray:
    t = np.maximum(transmission(x.shape[0], p["beta"]), HAZE_T0)
    st.sigma /= float(np.median(t))
    return ((x - float(p["airlight"]) * (1 - t)) / t).astype(np.float32)


# ------------------------------------------------------------------------------------------ plan

INVERSES: dict[str, Inverse] = {
    "haze": inverse_haze, "rain": inverse_rain,
    **{t: _inverse_blur(t) for t in BLUR_TYPES},
    "low_light": inverse_low_light, "downsample": inverse_downsample,
    "gaussian_noise": inverse_gaussian_noise, "poisson_noise": inverse_poisson_noise,
    "jpeg": inverse_jpeg,
}
assert set(INVERSES) == set(TAXONOMY), "every type needs an inverse"

OPERATOR_NAMES: dict[str, str] = {
    "haze": "scattering-model inversion", "rain": "directional streak removal",
    "gaussian_blur": "Wiener deconvolution", "motion_blur": "Wiener deconvolution",
    "defocus_blur": "Wiener deconvolution", "low_light": "exposure/gamma inversion",
    "downsample": "regularised back-projection", "gaussian_noise": "non-local means",
    "poisson_noise": "Anscombe + non-local means", "jpeg": "shifted JPEG re-application",
}


@dataclass(frozen=True)
class PlanStep:
    type: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def operator(self) -> str:
        return OPERATOR_NAMES[self.type]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.type}({args}) ← {self.operator}"


def plan(annotation: Annotation | Mapping[str, Any]) -> list[PlanStep]:
    """The inverse steps of an annotation: its degradations in reverse stage order."""
    ann = canonicalize(dict(annotation))
    return [PlanStep(d["type"], dict(d["params"])) for d in reversed(ann["degradations"])]


def run_plan(x: np.ndarray, steps: list[PlanStep], state: State | None = None) -> np.ndarray:
    """Apply `steps` to a float32 H×W×3 image in [0, 1]; every output is clipped to [0, 1]."""
    st = state or State()
    for step in steps:
        x = np.clip(INVERSES[step.type](x, step.params, st), 0, 1).astype(np.float32)
    return x


def restore(image_uint8_hwc: np.ndarray, annotation: Annotation | Mapping[str, Any]) -> np.ndarray:
    """Restore an image with the classical plan of `annotation` (uint8 RGB in, uint8 RGB out)."""
    img = to_rgb_uint8(image_uint8_hwc)
    return to_uint8(run_plan(to_float(img), plan(annotation)))
