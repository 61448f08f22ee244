"""Classical estimators on synthetic images with known physics, and the baselines' decision
rules."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import dutrain.evaluate.estimators as est
from dutrain.degrade import LUMA_WEIGHTS, apply_chain
from dutrain.evaluate.baselines import (
    ClassicalBaseline,
    PriorBaseline,
    best_threshold,
    prior_annotation,
)
from dutrain.rewards import score
from dutrain.schema import parse_answer


def scene(seed: int = 0, size: int = 128) -> np.ndarray:
    """A smooth synthetic scene with edges: gradients, disks and bars (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.4 * xx[..., None] * rng.uniform(0.5, 1, 3) + 0.2 * yy[..., None]
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.05, 0.95, 3)
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def chain(*items):
    return {"degradations": [{"type": t, "params": p} for t, p in items]}


def test_docstrings():
    assert doctest.testmod(est).failed == 0


@pytest.mark.parametrize("q", [8, 23, 35, 50, 71, 88])
def test_jpeg_quality_is_read_from_quantization_steps(q):
    img = apply_chain(scene(1), chain(("jpeg", {"quality": q})), 0)
    quality, s = est.jpeg_estimate(img)
    assert abs(quality - q) <= 1 and s > 0.5
    assert est.jpeg_estimate(scene(1))[1] < 0.3  # no JPEG: no periodicity


@pytest.mark.parametrize("sigma", [5, 15, 30])
def test_noise_sigma_and_type(sigma):
    img = apply_chain(scene(2), chain(("gaussian_noise", {"sigma": sigma})), 3)
    s, _, share = est.noise_estimate(img)
    assert s == pytest.approx(sigma, rel=0.15)
    assert share < 0.5  # signal-independent
    pois = apply_chain(scene(2), chain(("poisson_noise", {"peak": 40})), 3)
    _, peak, share = est.noise_estimate(pois)
    assert share > 0.5 and 20 < peak < 80


def test_jpeg_noise_estimate_sees_noise_that_jpeg_removed_from_pixels():
    img = apply_chain(scene(3), chain(("gaussian_noise", {"sigma": 30}), ("jpeg", {"quality": 25})),
                      1)
    q, _ = est.jpeg_estimate(img)
    assert est.noise_estimate(img)[0] < 10  # the pixel residual is quantized away
    assert est.jpeg_noise_estimate(img, q) > 15


def test_haze_dark_channel_tracks_beta_and_airlight():
    hazy = {b: est.haze_estimate(apply_chain(scene(4),
                                             chain(("haze", {"beta": b, "airlight": 0.8})), 0))
            for b in (0.5, 1.5, 2.5)}
    betas = [hazy[b][0] for b in (0.5, 1.5, 2.5)]
    assert betas == sorted(betas) and betas[1] == pytest.approx(1.5, rel=0.35)
    assert all(abs(a - 0.8) < 0.1 for _, a in hazy.values())  # bright objects bias A upwards
    assert est.haze_estimate(scene(4))[0] < betas[0]


def test_motion_blur_direction_and_blur_width():
    g = lambda im: im.astype(float) @ np.array(LUMA_WEIGHTS)  # noqa: E731
    img = apply_chain(scene(5), chain(("motion_blur", {"length": 15, "angle": 0})), 0)
    aniso, angle = est.directional_energy(g(img))
    assert aniso < est.directional_energy(g(scene(5)))[0] and angle in (0.0, 5.0, 175.0)
    assert est.spectral_cutoff(g(apply_chain(scene(5), chain(("downsample", {"scale": 0.3})), 0))) \
        < est.spectral_cutoff(g(scene(5)))


def test_prior_is_the_mode_with_median_values():
    anns = [chain(("jpeg", {"quality": 30})), chain(("jpeg", {"quality": 50})),
            chain(("jpeg", {"quality": 90})), chain(("haze", {"beta": 1.0, "airlight": 0.8})),
            {"degradations": []}]
    assert prior_annotation(anns) == chain(("jpeg", {"quality": 50}))
    b = PriorBaseline.fit(anns)
    assert b.support == pytest.approx(0.6)
    assert parse_answer(b.complete([None])[0]).ok
    with pytest.raises(ValueError, match="train split is empty"):
        prior_annotation([])


def test_best_threshold():
    stat = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    th, f1 = best_threshold(stat, np.array([False, False, False, True, True]))
    assert 0.3 < th < 0.8 and f1 == 1.0
    assert best_threshold(stat, np.zeros(5, bool))[0] == float("inf")


def test_classical_baseline_calibrates_and_answers_valid_text():
    rng = np.random.default_rng(0)
    anns, feats = [], []
    for i in range(24):
        a = chain(("gaussian_noise", {"sigma": int(rng.integers(5, 40))})) if i % 2 else \
            chain(("jpeg", {"quality": int(rng.integers(15, 80))}))
        anns.append(a)
        feats.append(est.measure(apply_chain(scene(i % 4), a, i)))
    b = ClassicalBaseline.fit(feats, anns)
    test = chain(("jpeg", {"quality": 42}))
    text = b.complete([apply_chain(scene(7), test, 0)])[0]
    assert parse_answer(text).ok
    s = score(text, test)
    assert s["type"] == 1.0 and s["value"] > 0.95
    with pytest.raises(ValueError, match="train split is empty"):
        ClassicalBaseline.fit([], [])


def test_classical_type_ranking_and_values_are_those_predict_answers_with():
    """`type_ranking` / `params_for` (the controller's alternatives and restore.diagnose's
    values) give exactly the type and values `predict` answers with, plus the runners-up."""
    rng = np.random.default_rng(1)
    anns, feats = [], []
    for i in range(24):
        a = chain(("gaussian_noise", {"sigma": int(rng.integers(10, 40))})) if i % 2 else \
            chain(("poisson_noise", {"peak": 5 * int(rng.integers(1, 8))}))
        anns.append(a)
        feats.append(est.measure(apply_chain(scene(i % 4), a, i)))
    b = ClassicalBaseline.fit(feats, anns)
    seen = 0
    for i in range(4):
        f = est.measure(apply_chain(scene(5 + i), anns[i], 100 + i))
        ann = b.predict(f)
        noise = [d for d in ann["degradations"] if d["type"].endswith("_noise")]
        ranked = b.type_ranking(6, f)
        assert sorted(ranked) == ["gaussian_noise", "poisson_noise"]
        if noise:
            seen += 1
            assert noise[0]["type"] == ranked[0]
            assert noise[0]["params"] == b.params_for(ranked[0], f)
    assert seen  # the comparison above ran
    assert b.type_ranking(7, feats[0]) == ["jpeg"]  # one type in the stage
    assert b.type_ranking(3, feats[0]) == []  # blur: no class means without blurred rows
    other = b.params_for("poisson_noise", feats[1])
    assert set(other) == {"peak"} and 1 <= other["peak"] <= 1000
