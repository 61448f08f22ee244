"""Measured cues move the right way, and the reasoning cites them truthfully."""

from __future__ import annotations

import re

import numpy as np
import pytest
from skimage import data

from dutrain.degrade import CUE_NAMES, apply_chain, measure_cues, sample_chain, write_reasoning
from dutrain.schema import TYPES, canonical_json, parse_answer, render_answer


def chain(*items):
    return {"degradations": [{"type": t, "params": p} for t, p in items]}


CROPS = {
    "astronaut": data.astronaut()[::4, ::4][:128, :128],
    "coffee": data.coffee()[100:228, 200:328],
    "chelsea": data.chelsea()[50:178, 100:228],
}


def cue_series(img, t, key, values, cue):
    return [measure_cues(apply_chain(img, chain((t, {**fixed(t), key: v})), 3))[cue]
            for v in values]


def fixed(t):
    return {"motion_blur": {"angle": 0}}.get(t, {})


@pytest.mark.parametrize("name", CROPS)
def test_more_noise_raises_the_noise_estimate(name):
    s = cue_series(CROPS[name], "gaussian_noise", "sigma", [5, 15, 40], "noise")
    assert s == sorted(s) and s[-1] > 2 * s[0]
    p = cue_series(CROPS[name], "poisson_noise", "peak", [200, 40, 8], "noise")
    assert p == sorted(p)


def test_noise_estimate_is_on_the_0_255_scale():
    flat = np.full((128, 128, 3), 120, np.uint8)
    for sigma in (5, 20):
        noisy = apply_chain(flat, chain(("gaussian_noise", {"sigma": sigma})), 0)
        est = measure_cues(noisy)["noise"]
        assert est == pytest.approx(sigma, rel=0.15)


@pytest.mark.parametrize("name", CROPS)
@pytest.mark.parametrize("t,key,values", [("gaussian_blur", "sigma", [0.5, 1.5, 3.0]),
                                          ("defocus_blur", "radius", [1.0, 2.5, 5.0]),
                                          ("motion_blur", "length", [3, 9, 21]),
                                          ("downsample", "scale", [0.9, 0.5, 0.25])])
def test_more_blur_lowers_hf_energy_and_widens_edges(name, t, key, values):
    img = CROPS[name]
    hf = cue_series(img, t, key, values, "hf_energy")
    assert hf == sorted(hf, reverse=True) and measure_cues(img)["hf_energy"] > hf[0]
    width = cue_series(img, t, key, values, "edge_width")
    assert width[-1] > width[0]


def test_edge_width_tracks_gaussian_sigma_on_a_step():
    step = np.zeros((64, 64, 3), np.uint8)
    step[:, 32:] = 200
    widths = {s: measure_cues(apply_chain(step, chain(("gaussian_blur", {"sigma": s})),
                                          0))["edge_width"]
              for s in (1.0, 2.0)}
    assert measure_cues(step)["edge_width"] == pytest.approx(1.0)
    for s, w in widths.items():  # 10-90 % width of a Gaussian-blurred step is 2.56 sigma
        assert w == pytest.approx(2.56 * s, rel=0.2)


@pytest.mark.parametrize("name", CROPS)
def test_lower_jpeg_quality_raises_blockiness(name):
    s = cue_series(CROPS[name], "jpeg", "quality", [95, 50, 15, 5], "blockiness")
    assert s == sorted(s) and s[-1] > 1.3


@pytest.mark.parametrize("name", CROPS)
def test_haze_low_light_and_rain_move_their_cues(name):
    img = CROPS[name]
    clean = measure_cues(img)
    hazy = measure_cues(apply_chain(img, chain(("haze", {"beta": 2.0, "airlight": 0.85})), 0))
    assert hazy["dark_channel"] > clean["dark_channel"] + 0.1
    assert hazy["haze_gradient"] > clean["haze_gradient"]
    assert hazy["contrast"] < clean["contrast"]
    dark = measure_cues(apply_chain(img, chain(("low_light", {"exposure": 0.3, "gamma": 2.0})), 0))
    assert dark["brightness"] < 0.5 * clean["brightness"]
    rainy = measure_cues(apply_chain(
        img, chain(("rain", {"density": 20, "length": 20, "angle": 10})), 0))
    assert rainy["streaks"] > clean["streaks"]


def test_cues_are_complete_and_finite():
    # their speed is measured, not asserted: tests/benchmarks/bench_degrade.py ("measure_cues")
    img = CROPS["astronaut"]
    cues = measure_cues(img)
    assert tuple(cues) == CUE_NAMES and all(np.isfinite(v) for v in cues.values())


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 5, 3), (9, 9), (3, 40, 4)])
def test_cues_on_tiny_images(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert all(np.isfinite(v) for v in measure_cues(img).values())


def test_reasoning_states_the_measured_numbers():
    ann = chain(("haze", {"beta": 1.5, "airlight": 0.8}), ("gaussian_blur", {"sigma": 1.2}),
                ("jpeg", {"quality": 30}))
    texts = set()
    for img in CROPS.values():
        cues = measure_cues(apply_chain(img, ann, 0))
        text = write_reasoning(cues, ann)
        assert text == write_reasoning(dict(cues), ann)  # deterministic
        assert f"edge width {cues['edge_width']:.1f} px" in text
        assert f"8x8 blockiness {cues['blockiness']:.2f}" in text
        assert f"top-bottom haze gradient {cues['haze_gradient']:.2f}" in text
        assert "implies jpeg compression" in text and "imply gaussian blur" in text
        assert "haze" in text
        assert text.index("haze") < text.index("gaussian blur") < text.index("jpeg compression")
        texts.add(text)
    assert len(texts) == len(CROPS)


def test_reasoning_for_clean_images_and_every_type():
    cues = measure_cues(CROPS["coffee"])
    clean = write_reasoning(cues, {"degradations": []})
    assert clean.endswith("None of them implies a degradation: clean.")
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        ann = sample_chain(rng, "train")
        text = write_reasoning(cues, ann)
        assert len(text) < 400
        assert all(float(n) != 0 for n in re.findall(r"-\d+\.?\d*", text))  # no "-0.00"
        parsed = parse_answer(render_answer(ann, text))
        assert parsed.ok and canonical_json(parsed.annotation) == canonical_json(ann)
        seen.update(d["type"] for d in ann["degradations"])
    assert seen == set(TYPES)


def test_reasoning_needs_the_cues_it_cites():
    with pytest.raises(ValueError, match=r"cues lack \['streaks'\]"):
        cues = {k: v for k, v in measure_cues(CROPS["coffee"]).items() if k != "streaks"}
        write_reasoning(cues, chain(("rain", {"density": 5, "length": 10, "angle": 0})))
