"""Classical, non-learned measurements of each degradation (pure functions on uint8 RGB).

Each estimator is a well-known physical method; `measure` returns all of them as one flat dict
of floats, on which the classical baseline calibrates its thresholds and linear maps.

- JPEG: quantization-step periodicity of 8x8 block-DCT coefficients of luma. For every libjpeg
  quality q the standard luminance table T_q predicts the steps; the score of q is the mean of
  cos(2π c / T_q[u, v]) over the lowest-frequency coefficients c (ignoring |c| < T/2, which fit any
  step). ``jpeg_quality`` = argmax, ``jpeg_score`` = its score (≈1 for a JPEG, ≈0 otherwise).
- Noise: Immerkær's Laplacian-difference residual over flat pixels, a robust (MAD) variance per
  intensity bin away from clipping, and a line var = a + b·μ through the bins: ``noise_sigma``
  (median bin σ, 0-255 DN), ``noise_peak`` = 255 / b (Poisson: var = 255 μ / peak) and
  ``noise_signal_share`` = b·128 / (a + b·128) (≈0 Gaussian, ≈1 Poisson). After a detected JPEG of
  quality < 70, ``noise_sigma_jpeg`` reads the noise from the quantized DCT instead
  (`jpeg_noise_estimate`); otherwise it equals ``noise_sigma``.
- Haze: dark channel prior with the dataset's depth model d = 1 - y/(H-1): airlight
  ``haze_airlight`` from the brightest 0.1 % of the dark channel; per row t = 1 - D(y)/A;
  ``haze_beta`` fits -ln t = beta·d through the origin.
- Blur: ``edge_width`` (10-90 % width of strong edges, dutrain.degrade cues); directional
  derivative energy E(θ): ``anisotropy`` = min/max, ``motion_angle`` = argmin (motion along θ
  removes the derivative along θ); ``lsf_shape`` = (10-90 % width)/(contrast/peak slope) of edges
  (≈1.0 Gaussian, ≈0.87 disk).
- Down-sampling: ``cutoff`` = lowest frequency (over Nyquist) where the windowed spectrum falls
  to the uint8 rounding floor (bicubic down/up-sampling by s empties the band above ≈ s).
- Low light: ``bright_p99`` (99.5th percentile of max(R, G, B), 0-1: the gain when the scene has a
  white) and ``gamma_raw`` = ln(median(I / gain)) / ln(0.4) (a typical scene median of 0.4).
- Rain: ``streaks`` (share of pixels brighter than their 5x5 mean by 20 DN, %) and
  ``rain_angle`` from the structure tensor of that bright residual (degrees from vertical).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.fft import dctn
from scipy.special import erfinv

from dutrain.degrade import LUMA_WEIGHTS, measure_cues
from dutrain.degrade.codec import libjpeg_luma_table

_LUMA = np.array(LUMA_WEIGHTS)
_LOW_FREQ = ((0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0))
_LOW_AC = _LOW_FREQ[1:]
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


_TABLES = np.stack([libjpeg_luma_table(q) for q in range(1, 101)])


def block_dct(rgb: np.ndarray) -> np.ndarray:
    """Orthonormal 8x8 DCT of the luma blocks (JPEG's grid and scale): blocks x 8 x 8."""
    y = rgb.astype(np.float64) @ _LUMA - 128.0
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    return dctn(blocks, axes=(2, 3), norm="ortho").reshape(-1, 8, 8)


def jpeg_estimate(rgb: np.ndarray, qualities: tuple[int, int] = (5, 95)) -> tuple[float, float]:
    """(quality, score) from block-DCT quantization periodicity (see module doc).

    Only qualities in `qualities` (the taxonomy's valid range) are tried; a quality is scored
    only where at least 3 coefficient positions have enough blocks with |c| >= T/2, since the
    mean of a few cosines is often high by chance.
    """
    c = block_dct(rgb)
    if c.shape[0] == 0:
        return 0.0, 0.0
    coef = np.stack([c[:, u, v] for u, v in _LOW_FREQ], axis=1).T  # K x blocks
    mag = np.abs(coef)
    need = max(16, c.shape[0] // 8)
    best_q, best = 0, 0.0
    # neighbouring qualities share most table entries: each (coefficient, step) is scored once
    seen: dict[tuple[int, float], float | None] = {}
    for q in range(qualities[0], qualities[1] + 1):
        s = []
        for k, (u, v) in enumerate(_LOW_FREQ):
            t = _TABLES[q - 1, u, v]
            if (k, t) not in seen:
                x = coef[k][mag[k] >= t / 2]
                seen[k, t] = np.cos(2 * np.pi * x / t).mean() if x.size >= need else None
            if seen[k, t] is not None:
                s.append(seen[k, t])
        score = float(np.mean(s)) if len(s) >= 3 else 0.0
        if score > best:
            best_q, best = q, score
    return float(best_q), best


def jpeg_noise_estimate(rgb: np.ndarray, quality: float) -> float:
    """Noise sigma (DN) left in the quantized DCT of a JPEG of known quality.

    JPEG removes the pixel-domain residual that Immerkær's method reads, but white noise of
    sigma puts sigma into every orthonormal DCT coefficient: a low-frequency AC coefficient with
    step T rounds to 0 with probability erf(T / (2√2 σ)) where the scene is flat, so
    σ = T / (2√2 erfinv(p0)) per coefficient (median over coefficients). Flat blocks are chosen
    by their DC's difference from the neighbouring blocks' (independent of the AC noise read).
    """
    h, w = rgb.shape[0] // 8, rgb.shape[1] // 8
    if h < 3 or w < 3:
        return 0.0
    c = block_dct(rgb).reshape(h, w, 8, 8)
    dc = c[:, :, 0, 0]
    pad = np.pad(dc, 1, mode="edge")
    neigh = np.median(np.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]), 0)
    act = np.abs(dc - neigh).ravel()
    flat = act <= np.percentile(act, 50)
    t = libjpeg_luma_table(int(quality))
    est = []
    for u, v in _LOW_AC:
        p0 = float(np.mean(np.abs(c[:, :, u, v].ravel()[flat]) < t[u, v] / 2))
        if 0.02 < p0 < 0.98:
            est.append(t[u, v] / (2 * np.sqrt(2) * erfinv(p0)))
    return float(np.median(est)) if est else 0.0


def noise_estimate(rgb: np.ndarray) -> tuple[float, float, float]:
    """(sigma in DN, Poisson peak, signal-dependent share) from binned residual variance."""
    x = rgb.astype(np.float32)
    g = x.mean(axis=2)
    if min(g.shape) < 8:
        return 0.0, 0.0, 0.0
    grad = np.hypot(ndi.sobel(g, 0), ndi.sobel(g, 1))[1:-1, 1:-1]
    mu = ndi.uniform_filter(g, 3)[1:-1, 1:-1]
    r = np.stack([ndi.correlate(x[:, :, c], _IMMERKAER)[1:-1, 1:-1] for c in range(3)], -1)
    flat = grad <= np.percentile(grad, 50)
    ok = flat & (mu > 4) & (mu < 251)
    if ok.sum() < 64:
        ok = flat
    edges = np.unique(np.quantile(mu[ok], np.linspace(0, 1, 9)))
    mus, vs = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = ok & (mu >= lo) & (mu <= hi)
        if m.sum() < 16:
            continue
        s = float(np.median(np.abs(r[m])) / 0.6745 / 6.0)  # the mask's gain is sqrt(36) = 6
        mm = float(mu[m].mean())
        # a Gaussian tail clipped at 0 or 255 shrinks the variance: keep bins 2 sigma inside
        if mm - 2 * s < 0 or mm + 2 * s > 255:
            continue
        mus.append(mm)
        vs.append(s * s)
    if not vs:
        return 0.0, 0.0, 0.0
    sigma = float(np.sqrt(np.median(vs)))
    if len(vs) < 3:
        return sigma, 0.0, 0.0
    b, a = np.polyfit(np.array(mus), np.array(vs), 1)
    b = max(float(b), 1e-6)
    share = float(np.clip(b * 128 / max(a + b * 128, 1e-6), -1, 2))
    return sigma, float(min(255.0 / b, 1000.0)), share


def haze_estimate(rgb: np.ndarray) -> tuple[float, float]:
    """(beta, airlight) by the dark channel prior and the depth model d = 1 - y/(H-1)."""
    x = rgb.astype(np.float32) / 255.0
    h = x.shape[0]
    dark = ndi.minimum_filter(x.min(axis=2), 7, mode="nearest")
    n = max(1, dark.size // 1000)
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    airlight = float(np.clip(x.max(axis=2).ravel()[idx].mean(), 0.05, 1.0))
    if h < 2:
        return 0.0, airlight
    d = 1.0 - np.arange(h) / (h - 1)
    row = np.percentile(dark, 10, axis=1)
    t = np.clip(1.0 - row / airlight, 1e-3, 1.0)
    ok = d > 0.05
    beta = float((d[ok] * -np.log(t[ok])).sum() / (d[ok] ** 2).sum())
    return beta, airlight


def directional_energy(g: np.ndarray) -> tuple[float, float]:
    """(anisotropy = min/max of E(θ), angle of the minimum in degrees [0, 180))."""
    gy, gx = np.gradient(g)
    angles = np.arange(0, 180, 5)
    a = np.deg2rad(angles)
    # direction (cos a, -sin a) in image coordinates (y down), as the motion-blur kernel
    sxx, syy, sxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    e = np.cos(a) ** 2 * sxx + np.sin(a) ** 2 * syy - 2 * np.sin(a) * np.cos(a) * sxy
    return float(e.min() / max(e.max(), 1e-12)), float(angles[int(np.argmin(e))])


def lsf_shape(g: np.ndarray) -> float:
    """Median over strong edge profiles of (10-90 % width) / (contrast / peak slope)."""
    out = []
    for arr in (g, g.T):
        d = np.diff(arr, axis=1)
        for i in range(0, arr.shape[0], 2):
            row, dr = arr[i], np.abs(d[i])
            j = int(np.argmax(dr))
            if dr[j] < 4 or j < 8 or j > row.size - 9:
                continue
            seg = row[j - 7:j + 9]
            lo, hi = seg.min(), seg.max()
            if hi - lo < 30:
                continue
            s = (seg - lo) / (hi - lo)
            if seg[-1] < seg[0]:
                s = 1 - s
            w = np.interp(0.9, np.maximum.accumulate(s), np.arange(s.size)) - \
                np.interp(0.1, np.maximum.accumulate(s), np.arange(s.size))
            out.append(w / ((hi - lo) / dr[j]))
    return float(np.median(out)) if out else 1.0


def spectral_cutoff(g: np.ndarray, bands: int = 32, margin: float = 0.5) -> float:
    """Lowest frequency (over Nyquist) where the spectrum falls to the uint8 rounding floor.

    The Hann-windowed power is averaged in `bands` square-ring bands (max(|fx|, |fy|)); the floor
    is white rounding noise of the luma, variance (0.299² + 0.587² + 0.114²) / 12 DN², times the
    window's energy. A band counts as empty when its log10 power is within `margin` of the
    floor; 1.0 when no band is (nothing removed the high frequencies).
    """
    h, w = g.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fft2((g - g.mean()) * win)) ** 2
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.abs(np.fft.fftfreq(w))[None, :]
    f = np.maximum(fy, fx) / 0.5
    floor = np.log10(sum(w ** 2 for w in LUMA_WEIGHTS) / 12.0 * (win ** 2).sum())
    idx = np.minimum((f * bands).astype(int), bands - 1)
    sums = np.bincount(idx.ravel(), p.ravel(), bands)
    counts = np.maximum(np.bincount(idx.ravel(), minlength=bands), 1)
    level = np.log10(sums / counts + 1e-12)
    empty = np.nonzero(level[1:] < floor + margin)[0]
    return float((empty[0] + 1) / bands) if empty.size else 1.0


def rain_angle(g: np.ndarray) -> float:
    """Orientation of the bright thin residual, degrees from vertical (bottom to the right > 0)."""
    res = np.clip(g - ndi.uniform_filter(g, 5), 0, None)
    gy, gx = np.gradient(res)
    sxx, syy, sxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    # the dominant gradient direction is across the streaks
    theta = 0.5 * np.arctan2(2 * sxy, sxx - syy)
    # streak direction (dx, dy) ⟂ gradient; angle from vertical with y down
    dx, dy = -np.sin(theta), np.cos(theta)
    if dy < 0:
        dx, dy = -dx, -dy
    return float(np.degrees(np.arctan2(dx, dy)))


def measure(image_uint8_hwc: np.ndarray) -> dict[str, float]:
    """Every estimate of the module doc, plus the shared cues, as plain floats."""
    rgb = np.asarray(image_uint8_hwc)
    g = rgb.astype(np.float64) @ _LUMA
    cues = measure_cues(rgb)
    q, qs = jpeg_estimate(rgb)
    sigma, peak, share = noise_estimate(rgb)
    beta, airlight = haze_estimate(rgb)
    aniso, angle = directional_energy(g)
    mx = rgb.max(axis=2).astype(np.float64) / 255.0
    gain = float(max(np.percentile(mx, 99.5), 1e-3))
    med = float(np.clip(np.median(g / 255.0) / gain, 1e-3, 0.999))
    return {
        **{k: float(v) for k, v in cues.items()},
        "jpeg_quality": q, "jpeg_score": qs,
        "noise_sigma": sigma, "noise_peak": peak, "noise_signal_share": share,
        # after a detected JPEG the pixel residual is quantized away: read the DCT instead
        "noise_sigma_jpeg": jpeg_noise_estimate(rgb, q) if qs > 0.5 and q < 70 else sigma,
        "jpeg_regime": 1.0 if qs > 0.5 and q < 70 else 0.0,
        "haze_beta": beta, "haze_airlight": airlight,
        "anisotropy": aniso, "motion_angle": angle, "lsf_shape": lsf_shape(g),
        "cutoff": spectral_cutoff(g),
        "bright_p99": gain, "gamma_raw": float(np.log(med) / np.log(0.4)),
        "rain_angle": rain_angle(g),
    }
