"""Physics of each operator against an independent formula or library call (docs/design.md §3)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage as ndi
from scipy import stats
from skimage import data

from dutrain.degrade import apply_chain, apply_operator, to_float
from dutrain.degrade._image import correlate_taps
from dutrain.degrade.blur import disk_kernel, motion_kernel
from dutrain.schema import param_spec


def chain(*items):
    return {"degradations": [{"type": t, "params": p} for t, p in items]}


@pytest.fixture(scope="module")
def natural() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[::4, ::4][:96, :112])


def float_images(max_side=12):
    sizes = st.tuples(st.integers(1, max_side), st.integers(1, max_side), st.integers(0, 2**32 - 1))
    return sizes.map(
        lambda hws: np.random.default_rng(hws[2]).random((hws[0], hws[1], 3), dtype=np.float32))


@settings(max_examples=40, deadline=None)
@given(img=float_images(), sigma=st.sampled_from(param_spec("gaussian_blur", "sigma").grid()))
def test_gaussian_blur_matches_scipy(img, sigma):
    ours = apply_operator(img, "gaussian_blur", {"sigma": sigma}, np.random.default_rng(0))
    ref = ndi.gaussian_filter(img.astype(np.float64), sigma=(sigma, sigma, 0), truncate=3.0,
                              mode="reflect")
    np.testing.assert_allclose(ours, ref, atol=2e-6)


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage mode 'reflect' (d c b a | a b c d): period 2n, mirrored second half."""
    i = np.mod(i, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


@settings(max_examples=30, deadline=None)
@given(img=float_images(), k=st.integers(1, 9).map(lambda r: 2 * r + 1), seed=st.integers(0, 99))
def test_correlation_reflects_borders_even_when_kernel_exceeds_image(img, k, seed):
    # written from the index formula: scipy.ndimage.correlate (n-d) reads out of bounds for an
    # axis of length 2 and a long kernel (scipy 1.17), while correlate1d and numpy agree with this
    kernel = np.random.default_rng(seed).random((k, k))
    h, w, r = img.shape[0], img.shape[1], k // 2
    ref = np.zeros(img.shape)
    for dy in range(k):
        for dx in range(k):
            rows = _reflect_index(np.arange(h) + dy - r, h)
            cols = _reflect_index(np.arange(w) + dx - r, w)
            ref += kernel[dy, dx] * img[rows][:, cols]
    np.testing.assert_allclose(correlate_taps(img, kernel), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [3, 7, 25])
def test_motion_kernel_horizontal_and_vertical_are_lines(length):
    h = motion_kernel(length, 0)
    r = h.shape[0] // 2
    expected = np.zeros_like(h)
    expected[r, r - length // 2:r + length // 2 + 1] = 1.0 / length
    np.testing.assert_allclose(h, expected, atol=1e-12)
    np.testing.assert_allclose(motion_kernel(length, 90), expected.T, atol=1e-12)


@pytest.mark.parametrize("length,angle", [(4, 0), (10, 30), (25, 135), (41, 45)])
def test_motion_kernel_normalized_symmetric_and_oriented(length, angle):
    k = motion_kernel(length, angle)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # centred segment
    r = k.shape[0] // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    a = np.deg2rad(angle)
    along = (xx * np.cos(a) - yy * np.sin(a))  # y points down: 45 deg rises to the right
    spread = np.sqrt((k * along**2).sum() * 12 + 1)  # L evenly spaced taps: var = (L^2 - 1) / 12
    assert spread == pytest.approx(length, rel=0.1)


@pytest.mark.parametrize("radius", [1.0, 2.5, 6.0, 9.0])
def test_disk_kernel_is_normalized_round_disk(radius):
    k = disk_kernel(radius)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1])
    r = k.shape[0] // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    assert np.all(k[np.hypot(yy, xx) >= radius + 0.5] == 0)
    # the anti-aliased disk covers about pi * (r + 0.5)^2 - its 1 px ramp
    area = (k / k.max()).sum()
    assert area == pytest.approx(np.pi * radius**2, rel=0.1)


@pytest.mark.parametrize("kind,params", [("motion_blur", {"length": 9, "angle": 30}),
                                         ("defocus_blur", {"radius": 2.5})])
def test_blur_applies_its_kernel_with_reflect_border(natural, kind, params):
    x = to_float(natural)
    kernel = motion_kernel(9, 30) if kind == "motion_blur" else disk_kernel(2.5)
    ref = ndi.correlate(x.astype(np.float64), kernel[:, :, None], mode="reflect")
    np.testing.assert_allclose(apply_operator(x, kind, params, np.random.default_rng(0)), ref,
                               atol=2e-6)


@pytest.mark.parametrize("scale", [0.25, 0.5, 0.9, 0.15])
def test_downsample_matches_pillow(natural, scale):
    h, w = natural.shape[:2]
    out = apply_chain(natural, chain(("downsample", {"scale": scale})), 0)
    size = (round(w * scale), round(h * scale))
    bic = Image.Resampling.BICUBIC
    # exact: the float pipeline of docs/design.md, written out with Pillow "F" images
    def resize(x, sz):
        return np.clip(np.asarray(Image.fromarray(x).resize(sz, bic)), 0, 1)
    chans = [resize(resize(natural[:, :, c].astype(np.float32) / np.float32(255), size), (w, h))
             for c in range(3)]
    exact = np.rint(np.clip(np.stack(chans, 2), 0, 1) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(out, exact)
    # Pillow's own uint8 RGB resize rounds and clips after each 1-D pass: close, not equal
    rgb = np.asarray(Image.fromarray(natural).resize(size, bic).resize((w, h), bic))
    diff = np.abs(out.astype(int) - rgb.astype(int))
    assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 3 and diff.max() <= 12


def _pillow_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.mark.parametrize("quality", [5, 35, 95])
def test_jpeg_matches_pillow_and_quantizes_right_before_encoding(natural, quality):
    out = apply_chain(natural, chain(("jpeg", {"quality": quality})), 0)
    np.testing.assert_array_equal(out, _pillow_jpeg(natural, quality))
    blur = ("gaussian_blur", {"sigma": 1.3})
    blurred = apply_chain(natural, chain(blur), 0)
    np.testing.assert_array_equal(
        apply_chain(natural, chain(blur, ("jpeg", {"quality": quality})), 0),
        _pillow_jpeg(blurred, quality))


def _closed_form(img: np.ndarray, f) -> np.ndarray:
    return np.rint(np.clip(f(img.astype(np.float64) / 255), 0, 1) * 255).astype(int)


@settings(max_examples=25, deadline=None)
@given(beta=st.sampled_from(param_spec("haze", "beta").grid()),
       a=st.sampled_from(param_spec("haze", "airlight").grid()), h=st.integers(1, 40))
def test_haze_closed_form(natural, beta, a, h):
    img = natural[:h]
    out = apply_chain(img, chain(("haze", {"beta": beta, "airlight": a})), 0).astype(int)
    d = np.ones(h) if h == 1 else 1 - np.arange(h) / (h - 1)
    t = np.exp(-beta * d)[:, None, None]
    assert np.abs(out - _closed_form(img, lambda j: j * t + a * (1 - t))).max() <= 1
    if h > 1:
        np.testing.assert_array_equal(out[-1], img[-1])  # depth 0 at the bottom: untouched


@settings(max_examples=25, deadline=None)
@given(e=st.sampled_from(param_spec("low_light", "exposure").grid()),
       g=st.sampled_from(param_spec("low_light", "gamma").grid()))
def test_low_light_closed_form(natural, e, g):
    out = apply_chain(natural, chain(("low_light", {"exposure": e, "gamma": g})), 0).astype(int)
    assert np.abs(out - _closed_form(natural, lambda j: e * j**g)).max() <= 1


@pytest.mark.parametrize("sigma", [2, 20, 50])
def test_gaussian_noise_residual_statistics(sigma):
    img = np.full((200, 200, 3), 128, np.uint8)
    r = apply_chain(img, chain(("gaussian_noise", {"sigma": sigma})), 7).astype(float) - 128
    assert abs(r.mean()) < 0.05 * sigma + 0.05
    assert r.std() == pytest.approx(np.sqrt(sigma**2 + 1 / 12), rel=0.02)  # + quantization
    # independent per channel
    assert abs(np.corrcoef(r[..., 0].ravel(), r[..., 1].ravel())[0, 1]) < 0.02


@pytest.mark.parametrize("peak", [5, 50, 200])
def test_poisson_noise_residual_statistics(peak):
    level = 102  # J = 0.4
    img = np.full((200, 200, 3), level, np.uint8)
    out = apply_chain(img, chain(("poisson_noise", {"peak": peak})), 3).astype(float)
    counts = np.rint(out * peak / 255)
    np.testing.assert_array_equal(np.rint(counts * 255 / peak), out)  # values are counts / peak
    # moments of min(Poisson(peak * J), peak): the clip at 1 caps the count at `peak`
    k = np.arange(peak + 1)
    pmf = stats.poisson.pmf(k, peak * level / 255)
    pmf[-1] += 1 - pmf.sum()
    mean = (k * pmf).sum()
    assert counts.mean() == pytest.approx(mean, rel=0.02)
    assert counts.var() == pytest.approx((k**2 * pmf).sum() - mean**2, rel=0.04)


def test_rain_streaks_follow_the_documented_positions():
    h, w, length = 60, 50, 11
    img = np.zeros((h, w, 3), np.uint8)
    seed = 12
    out = apply_chain(img, chain(("rain", {"density": 4, "length": length, "angle": 0})), seed)
    n = round(4 * h * w / 10_000)
    rng = np.random.default_rng([seed, 2])
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    mask = np.zeros((h, w))
    for y, x in zip(ys, xs):  # vertical segments of `length` px centred on each position
        mask[max(0, y - length // 2):y + length // 2 + 1, x] += 1
    expected = np.rint(np.minimum(mask, 1) * 0.8 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[:, :, None], 3, 2))


def test_rain_only_brightens_and_scales_with_density(natural):
    def covered(density):
        out = apply_chain(natural,
                          chain(("rain", {"density": density, "length": 15, "angle": 20})), 5)
        assert np.all(out >= natural)
        return (out > natural).any(axis=2).mean()
    assert covered(2) < covered(10) < covered(40)


def test_rain_angle_leans_bottom_right_for_positive_angles():
    img = np.zeros((80, 80, 3), np.uint8)
    out = apply_chain(img, chain(("rain", {"density": 2, "length": 41, "angle": 30})), 1)[..., 0]
    ys, xs = np.nonzero(out > 100)
    assert np.corrcoef(ys, xs)[0, 1] > 0.5  # x grows with y (rows go down)
