"""Classical restoration: the plan, the operators' physics, and measured PSNR gains per type."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as psnr

from dutrain.config import ConfigError, load_config
from dutrain.config.restore import RestoreConfig
from dutrain.degrade import apply_chain, apply_operator, sample_chain, to_float
from dutrain.restore import plan, restore
from dutrain.restore.physics import downsample_matrix, psf
from dutrain.schema import TYPES


def _crop(name: str, n: int = 96) -> np.ndarray:
    im = getattr(data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=2)
    h, w = im.shape[:2]
    s = min(h, w)
    im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return np.asarray(Image.fromarray(im).resize((n, n), Image.Resampling.LANCZOS))


IMAGES = {name: _crop(name) for name in ("astronaut", "camera", "coffee", "chelsea")}

# type → (params, least PSNR gain in dB on every image). Measured on these four 96-px crops
# (seed = image index): haze 36.2, rain 4.6, gaussian_blur 3.2, motion_blur 1.3,
# defocus_blur 3.4, low_light 25.5, downsample 0.90, gaussian_noise 3.8, poisson_noise 5.8,
# jpeg 0.24 (the least gain over the four images); the bounds leave ~20 % slack.
CASES = {
    "haze": ({"beta": 1.2, "airlight": 0.8}, 30.0),
    "rain": ({"density": 10, "length": 15, "angle": 10}, 3.5),
    "gaussian_blur": ({"sigma": 1.5}, 2.5),
    "motion_blur": ({"length": 9, "angle": 30}, 1.0),
    "defocus_blur": ({"radius": 2.5}, 2.7),
    "low_light": ({"exposure": 0.4, "gamma": 2.0}, 20.0),
    "downsample": ({"scale": 0.5}, 0.7),
    "gaussian_noise": ({"sigma": 20}, 3.0),
    "poisson_noise": ({"peak": 30}, 4.5),
    "jpeg": ({"quality": 30}, 0.15),
}


def test_cases_cover_every_type():
    assert set(CASES) == set(TYPES)


@pytest.mark.parametrize("type_name", list(CASES))
def test_true_annotation_raises_psnr(type_name):
    params, margin = CASES[type_name]
    ann = {"degradations": [{"type": type_name, "params": params}]}
    for i, (name, clean) in enumerate(IMAGES.items()):
        degraded = apply_chain(clean, ann, seed=i)
        restored = restore(degraded, ann)
        gain = psnr(clean, restored) - psnr(clean, degraded)
        assert gain >= margin, f"{type_name} on {name}: gain {gain:.2f} dB < {margin} dB"


def test_wrong_annotation_is_worse_than_the_true_one():
    clean = IMAGES["camera"]
    true = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.5}}]}
    wrong = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 3.5}}]}
    degraded = apply_chain(clean, true, seed=0)
    assert psnr(clean, restore(degraded, true)) > psnr(clean, restore(degraded, wrong)) + 2.0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_plan_is_reverse_stage_order(seed):
    ann = sample_chain(np.random.default_rng(seed), "train", max_degradations=7)
    assert [s.type for s in plan(ann)] == [d["type"] for d in reversed(ann["degradations"])]
    assert [s.params for s in plan(ann)] == [d["params"] for d in reversed(ann["degradations"])]


def test_clean_annotation_is_identity_and_inputs_are_converted():
    img = IMAGES["coffee"]
    assert np.array_equal(restore(img, {"degradations": []}), img)
    gray = img[:, :, 0]
    out = restore(gray, {"degradations": [{"type": "jpeg", "params": {"quality": 40}}]})
    assert out.shape == img.shape and out.dtype == np.uint8


def test_bad_annotation_names_the_problem():
    with pytest.raises(ValueError, match="unknown type 'gausian_blur'"):
        restore(IMAGES["coffee"], {"degradations": [{"type": "gausian_blur",
                                                     "params": {"sigma": 1.0}}]})


def test_downsample_matrix_is_the_library_operator_without_clipping():
    # a smooth image in [0.3, 0.7] never overshoots [0, 1], so the library's clips are no-ops
    rng = np.random.default_rng(0)
    x = (0.5 + 0.2 * np.sin(np.linspace(0, 3, 40))[:, None, None]
         * np.cos(np.linspace(0, 2, 56))[None, :, None] * rng.uniform(0.5, 1, (1, 1, 3)))
    x = x.astype(np.float32)
    for scale in (0.25, 0.5, 0.75):
        lib = apply_operator(x, "downsample", {"scale": scale}, rng)
        mine = np.einsum("ij,jkc,lk->ilc", downsample_matrix(40, scale), x,
                         downsample_matrix(56, scale))
        assert np.abs(mine - lib).max() < 1e-5


def test_psf_is_the_library_blur():
    img = to_float(IMAGES["astronaut"])
    from scipy import ndimage
    for t, p in [("gaussian_blur", {"sigma": 1.3}), ("motion_blur", {"length": 7, "angle": 60}),
                 ("defocus_blur", {"radius": 2.0})]:
        k = psf(t, p)
        assert abs(k.sum() - 1) < 1e-9
        mine = np.stack([ndimage.correlate(img[:, :, c].astype(np.float64), k, mode="reflect")
                         for c in range(3)], axis=2)
        lib = apply_operator(img, t, p, np.random.default_rng(0))
        assert np.abs(mine - lib).max() < 1e-5


def test_config_rules():
    with pytest.raises(ConfigError, match="needs 'restore.model'"):
        load_config(RestoreConfig, overrides=["input=x.png", "annotation=a.json",
                                              "restore.backend=ddnm"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(RestoreConfig, overrides=["input=x", "annotation=a.json", "model=tiny"])
    with pytest.raises(ConfigError, match="missing value for 'input'"):
        load_config(RestoreConfig, overrides=["model=tiny"]).check_inputs()
    with pytest.raises(ConfigError, match="set 'annotation'"):
        load_config(RestoreConfig, overrides=["input=imgs"]).check_inputs()
    with pytest.raises(ConfigError, match="'calibration'"):
        load_config(RestoreConfig, overrides=["input=imgs", "model=baseline:classical"])
    cfg = load_config(RestoreConfig, overrides=["input=root", "split=test"])
    assert cfg.restore.backend == "classical"
