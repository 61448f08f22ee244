"""The controlled restoration plan's pure parts: threshold calibration, the rollback decision,
thresholds files and bad input (NaN result, tiny image, unparseable answer, failing operator)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage import data

from dutrain.degrade import apply_chain
from dutrain.errors import UserError
from dutrain.restore import controller as C
from dutrain.restore.classical import INVERSES

# a classical-baseline calibration with one presence rule per stage (what check_step reads)
CAL = {"presence": {
    "1": {"feature": "haze_gradient", "sign": 1.0, "threshold": 0.1},
    "2": {"feature": "streaks", "sign": 1.0, "threshold": 1.0},
    "3": {"feature": "edge_width", "sign": 1.0, "threshold": 3.0},
    "4": {"feature": "bright_p99", "sign": -1.0, "threshold": -0.6},
    "5": {"feature": "cutoff", "sign": -1.0, "threshold": -0.8},
    "6": {"feature": "noise_sigma_jpeg", "sign": 1.0, "threshold": 4.0},
    "7": {"feature": "jpeg_score", "sign": 1.0, "threshold": 0.5}}}
READ = {"haze_gradient": 0.0, "streaks": 0.0, "edge_width": 2.0, "bright_p99": 0.3, "cutoff": 1.0,
        "noise_sigma_jpeg": 1.0, "noise_sigma": 1.0, "jpeg_score": 0.05, "clipped": 0.0}
DARK = {"degradations": [{"type": "low_light", "params": {"exposure": 0.4, "gamma": 2.0}}]}


def _img(size=64):
    return np.ascontiguousarray(data.astronaut()[100:100 + size, 150:150 + size])


# ------------------------------------------------------------------------------ calibration

def test_threshold_maximises_the_summed_gain_on_synthetic_numbers():
    recs = [("haze", 0.9, 5.0), ("haze", 0.7, 3.0), ("haze", 0.5, -4.0), ("haze", 0.1, -9.0),
            ("jpeg", 0.2, 0.5), ("jpeg", 0.8, 0.4),            # every step gains: apply all
            ("motion_blur", 0.3, -10.0), ("motion_blur", 0.9, -1.0),  # never gains: never
            ("rain", 0.4, 2.0), ("rain", 0.4, -1.0), ("rain", 0.2, -3.0)]  # tied scores
    th = C.calibrate_thresholds(recs)
    assert th["haze"] == 0.7  # 5 + 3 = 8 beats 8 - 4 and everything
    assert th["jpeg"] == -math.inf
    assert th["motion_blur"] == math.inf
    assert th["rain"] == 0.4  # both rows at 0.4 go in together (+1), not the −3 one
    # non-finite numbers are ignored, not propagated
    assert C.calibrate_thresholds([("haze", float("nan"), 1.0), ("haze", 0.5, math.inf)]) == {}
    # a type the calibration never saw is not applied (no evidence its step helps)
    assert C.calibrate_thresholds(recs, ["haze", "defocus_blur"])["defocus_blur"] == math.inf
    assert C.calibrate_thresholds(recs, ["haze"])["haze"] == 0.7


def test_thresholds_round_trip_and_bad_files(tmp_path):
    p = tmp_path / "thresholds.json"
    C.save_thresholds(p, {"haze": 0.7, "jpeg": -math.inf, "motion_blur": math.inf},
                      {"haze": 4}, C.SCORE_NAME, "val")
    assert json.loads(p.read_text())["thresholds"]["motion_blur"] == "inf"
    assert C.load_thresholds(p, C.SCORE_NAME) == {"haze": 0.7, "jpeg": -math.inf,
                                                   "motion_blur": math.inf}
    with pytest.raises(UserError, match="calibrated for scores"):
        C.load_thresholds(p, "vlm_logprob")
    p.write_text("{not json")
    with pytest.raises(UserError, match="is not usable"):
        C.load_thresholds(p, C.SCORE_NAME)
    p.write_text(json.dumps({"version": 1, "score": C.SCORE_NAME, "thresholds": {"fog": 1}}))
    with pytest.raises(UserError, match="unknown types: fog"):
        C.load_thresholds(p, C.SCORE_NAME)


# ---------------------------------------------------------------------------------- check

def test_rollback_decision():
    ok, _ = C.check_step("low_light", READ, {**READ, "bright_p99": 0.9}, CAL)
    assert ok
    # its own degradation looks worse afterwards
    ok, why = C.check_step("low_light", READ, {**READ, "bright_p99": 0.2}, CAL)
    assert not ok and "moved away from absent" in why
    # amplified noise: rejected at gain 1, accepted when the operator expects a gain of 5
    noisy = {**READ, "bright_p99": 0.9, "noise_sigma": 5.0}
    assert not C.check_step("low_light", READ, noisy, CAL)[0]
    assert C.check_step("low_light", READ, noisy, CAL, amplification=5.0)[0]
    # new blockiness, new clipping (haze exempt from clipping)
    ok, why = C.check_step("gaussian_blur", READ, {**READ, "jpeg_score": 0.5}, CAL)
    assert not ok and "blockiness" in why
    ok, why = C.check_step("downsample", READ, {**READ, "clipped": 0.3}, CAL)
    assert not ok and "clipping" in why
    assert C.check_step("haze", READ, {**READ, "clipped": 0.3}, CAL)[0]
    # a Gaussian denoising step whose noise the pixels do not show
    ok, why = C.check_step("gaussian_noise", READ, {**READ, "noise_sigma_jpeg": 0.5}, CAL,
                           {"sigma": 20})
    assert not ok and "not the 20 DN" in why
    # ... a Poisson one likewise: at peak 20 and mean level 0.4 it removes 255·sqrt(0.02) DN
    flat = {**READ, "mean": 0.4, "noise_sigma": 0.5}
    ok, why = C.check_step("poisson_noise", flat, flat, CAL, {"peak": 20})
    assert not ok and "36.1 DN of photon noise" in why
    noisy = {**flat, "noise_sigma": 30.0}
    assert C.check_step("poisson_noise", noisy, {**noisy, "noise_sigma": 8.0}, CAL,
                        {"peak": 20})[0]


def _control(img, ann, scores=None, thresholds=None, **kw):
    scores = scores if scores is not None else {t: 1.0 for t in INVERSES}
    return C.control(img, ann, scores, thresholds or {}, CAL, C.reading, **kw)


def test_controller_applies_skips_and_rolls_back():
    clean = _img()
    dark = apply_chain(clean, DARK, 0)
    o = _control(dark, DARK)
    assert [s.action for s in o.steps] == ["applied"] and o.touched
    assert np.abs(o.image.astype(float) - clean).mean() < np.abs(dark.astype(float) - clean).mean()
    o = _control(dark, DARK, thresholds={"low_light": 2.0})
    assert o.steps[0].action == "skipped" and "below threshold" in o.steps[0].reason
    assert np.array_equal(o.image, dark)
    # no confidence at all: nothing is applied
    o = C.control(dark, DARK, None, {}, CAL, C.reading)
    assert o.steps[0].action == "skipped" and np.array_equal(o.image, dark)
    # a check that fails rolls the step back: the image stays as it was
    o = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL,
                  lambda im: {**READ, "bright_p99": 0.0 if im is not dark else 0.5},
                  before={**READ, "bright_p99": 0.5})
    assert o.steps[0].action == "rolled_back" and np.array_equal(o.image, dark)


# ------------------------------------------------------------------------------ bad input

def test_unparseable_answer_and_tiny_image_are_left_unrestored():
    img = _img()
    o = _control(img, None)
    assert o.reason == "answer did not parse" and np.array_equal(o.image, img) and not o.steps
    o = _control(img, {"degradations": [{"type": "fog", "params": {}}]})
    assert o.reason.startswith("unusable annotation") and np.array_equal(o.image, img)
    tiny = img[:6, :6]
    o = _control(tiny, DARK)
    assert "too small" in o.reason and o.steps[0].action == "failed"
    assert np.array_equal(o.image, tiny)
    assert json.loads(json.dumps(o.to_json()))["steps"][0]["action"] == "failed"


def test_non_finite_result_and_failing_operator_leave_the_step_out(monkeypatch):
    img = _img()
    monkeypatch.setitem(INVERSES, "low_light", lambda x, p, st: np.full_like(x, np.nan))
    o = _control(img, DARK)
    assert o.steps[0].action == "failed" and "non-finite" in o.steps[0].reason
    assert np.array_equal(o.image, img)

    def boom(x, p, st):
        raise ValueError("kernel (41, 41) is larger than the image (20, 20)")
    monkeypatch.setitem(INVERSES, "low_light", boom)
    o = _control(img, DARK)
    assert o.steps[0].action == "failed" and "larger than the image" in o.steps[0].reason
    assert np.array_equal(o.image, img)


def test_risk_coverage_and_worse_share():
    rows = C.risk_coverage([3.0, 2.0, 1.0, 0.0], [4.0, 2.0, -2.0, -8.0], shares=(0.5, 1.0))
    assert rows[0] == {"coverage": 0.5, "gain": 1.5, "worse": 0.0}
    assert rows[1] == {"coverage": 1.0, "gain": -1.0, "worse": 0.5}
    assert C.worse_share([0.0, -0.4, -0.6]) == pytest.approx(1 / 3)


def test_type_confidences_from_token_logprobs():
    text = ('<think>dark</think>\n<answer>{"degradations": [{"type": "low_light", "params": '
            '{"exposure": 0.4}}, {"type": "jpeg", "params": {"quality": 30}}]}</answer>')
    # tokens: cut the text into pieces, "low" + "_light" and "jpeg" carry known log-probs
    cuts = [text.index("low_light"), text.index("low_light") + 3, text.index("low_light") + 9,
            text.index('"jpeg"') + 1, text.index('"jpeg"') + 5]
    bounds = [0, *cuts, len(text)]
    pieces = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    lps = [0.0] * len(pieces)
    lps[1], lps[2], lps[4] = np.log(0.5), np.log(0.8), np.log(0.9)
    lps[0] = np.log(0.01)  # tokens outside the type names do not count
    conf = C.type_confidences(text, pieces, lps)
    assert conf == pytest.approx({"low_light": 0.4, "jpeg": 0.9})
    # pieces that do not spell the text, or unequal lengths: no confidence at all
    assert C.type_confidences(text, pieces[:-1], lps[:-1]) == {}
    assert C.type_confidences(text, pieces, lps[:-1]) == {}
    # an answer without a type field
    assert C.type_confidences("<answer>{}</answer>", ["<answer>{}</answer>"], [0.0]) == {}


def test_type_confidences_tolerate_a_reasoning_part_decoded_differently():
    answer = '<answer>{"degradations": [{"type": "haze", "params": {"beta": 1.0}}]}</answer>'
    text = "<think>caf\u00e9</think>\n" + answer
    # token-by-token decoding splits the two-byte character into two replacement characters
    pieces = ["<think>caf", "\ufffd", "\ufffd", "</think>\n", answer[:answer.index("haze")],
              "haze", answer[answer.index("haze") + 4:]]
    lps = [0.0, 0.0, 0.0, 0.0, 0.0, float(np.log(0.7)), 0.0]
    assert C.type_confidences(text, pieces, lps) == pytest.approx({"haze": 0.7})
    # a mismatch inside the answer is not tolerated
    bad = pieces[:-1] + [pieces[-1].replace("1.0", "2.0")]
    assert C.type_confidences(text, bad, lps) == {}


# ----------------------------------------------------------------------------- alternatives

DARK_B = {"exposure": 0.5, "gamma": 1.5}


def _first_fails(dark):
    """A reading under which the step of DARK's own values fails the check (its statistic moves
    away from absent) and every other result passes."""
    first = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL, C.reading).image
    return lambda im: {**READ, "bright_p99": 0.0 if np.array_equal(im, first) else 0.9}


def test_a_rolled_back_step_tries_the_next_alternative_within_the_budget():
    from dutrain.restore.classical import PlanStep
    dark = apply_chain(_img(), DARK, 0)
    measure = _first_fails(dark)
    before = {**READ, "bright_p99": 0.5}
    alts = [PlanStep("low_light", dict(DARK["degradations"][0]["params"])),  # the same: skipped
            PlanStep("low_light", DARK_B)]
    o = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL, measure, before=before,
                  alternatives=lambda s: alts, budget=2)
    assert [s.action for s in o.steps] == ["rolled_back", "applied"]
    assert o.steps[1].alternative_to == "low_light" and o.steps[1].params == DARK_B
    assert o.alternatives == 1 and o.touched
    want = C.control(dark, {"degradations": [{"type": "low_light", "params": DARK_B}]},
                     {"low_light": 1.0}, {}, CAL, C.reading).image
    assert np.array_equal(o.image, want)
    assert o.to_json()["steps"][1]["alternative_to"] == "low_light"
    # no budget: the rollback stands and the image stays as it was
    o = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL, measure, before=before,
                  alternatives=lambda s: alts, budget=0)
    assert [s.action for s in o.steps] == ["rolled_back"] and np.array_equal(o.image, dark)
    # the budget counts per image: two failing alternatives of three tried at budget 2
    fail = lambda im: {**READ, "bright_p99": 0.0}  # noqa: E731
    many = [PlanStep("low_light", {"exposure": e, "gamma": 1.0}) for e in (0.3, 0.5, 0.6)]
    o = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL, fail, before=before,
                  alternatives=lambda s: many, budget=2)
    assert o.alternatives == 2 and [s.action for s in o.steps] == ["rolled_back"] * 3
    assert np.array_equal(o.image, dark)
    # an alternative whose type's threshold the confidence misses, or whose type is already in
    # the plan, is not tried
    o = C.control(dark, DARK, {"low_light": 1.0}, {"haze": math.inf}, CAL, fail, before=before,
                  alternatives=lambda s: [PlanStep("haze", {"beta": 1.0, "airlight": 0.8})],
                  budget=2)
    assert o.alternatives == 0 and len(o.steps) == 1


def test_controlled_alternatives_come_from_the_classical_ranking():
    class Base:  # the two ClassicalBaseline methods the controller uses
        def type_ranking(self, stage, feats):
            return ["defocus_blur", "gaussian_blur", "motion_blur"] if stage == 3 else []

        def params_for(self, t, feats):
            return {"gaussian_blur": {"sigma": 1.0}, "defocus_blur": {"radius": 2.0},
                    "motion_blur": {"length": 5, "angle": 0}}[t]
    from dutrain.restore.classical import PlanStep
    ctl = C.Controlled(CAL, {}, "", base=Base(), budget=2, feats={"a": READ})
    alts = ctl.alternatives("a")(PlanStep("gaussian_blur", {"sigma": 2.0}))
    # the same type with the estimators' values first, then the stage's ranking
    assert [(a.type, a.params) for a in alts] == [
        ("gaussian_blur", {"sigma": 1.0}), ("defocus_blur", {"radius": 2.0}),
        ("motion_blur", {"length": 5, "angle": 0})]
    assert ctl.alternatives("unknown image") is None
    assert C.Controlled(CAL, {}, "", base=Base(), budget=0, feats={"a": READ}
                        ).alternatives("a") is None


# -------------------------------------------------------------------------- risk–coverage

def test_risk_coverage_curves_json_and_png(tmp_path):
    curves = C.risk_coverage_curves([3.0, 2.0, 1.0, 0.0], [4.0, 2.0, -2.0, -8.0],
                                    [4.0, 1.0, 0.0, 0.0], touched=0.5)
    assert curves["n"] == 4 and curves["shares"][0] == 0.0 and curves["shares"][-1] == 1.0
    last = curves["plain_by_confidence"][-1]
    assert last["coverage"] == 1.0 and last["gain"] == -1.0 and last["worse"] == 0.5
    half = {r["coverage"]: r for r in curves["plain_by_confidence"]}[0.5]
    assert half["gain"] == 1.5
    # the best order never does worse than the confidence's order
    assert all(b["gain"] >= a["gain"] - 1e-12 for a, b in
               zip(curves["plain_by_confidence"], curves["plain_best_order"]))
    assert curves["controller"] == {"coverage": 0.5, "gain": 1.25, "worse": 0.0}
    json.dumps(curves)
    C.plot_risk_coverage(curves, tmp_path / "rc.png", "test")
    from PIL import Image
    assert Image.open(tmp_path / "rc.png").size[0] > 100
