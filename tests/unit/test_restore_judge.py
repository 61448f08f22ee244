"""The controller's learned check (`restore.judge`): its records, what it learns, its file and
how the controller and the val calibration use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data
from test_restore_controller import CAL, DARK, READ

from dutrain.degrade import apply_chain
from dutrain.errors import UserError
from dutrain.restore import controller as C
from dutrain.restore import judge as J
from dutrain.schema import TAXONOMY, check_annotation

NOISY = {"degradations": [{"type": "gaussian_noise", "params": {"sigma": 20}}]}


def _img(size=48):
    return np.ascontiguousarray(data.astronaut()[100:100 + size, 150:150 + size])


def _records(rule, n=80, type_name="gaussian_noise", seed=0):
    """Synthetic records of one type whose gain follows `rule(noise before)`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        before = {**READ, "noise_sigma": float(rng.uniform(0, 20))}
        after = {**before, "noise_sigma": before["noise_sigma"] * 0.3}
        out.append({"type": type_name, "params": {"sigma": 10}, "before": before,
                    "after": after, "gain": rule(before["noise_sigma"])})
    return out


def test_random_params_lie_on_the_grid_inside_the_train_range():
    rng = np.random.default_rng(0)
    for t in J.RESTORING:
        for _ in range(20):
            p = J.random_params(t, rng)
            for ps in TAXONOMY[t].params:
                assert ps.train[0] - 1e-9 <= p[ps.key] <= ps.train[1] + 1e-9
            check_annotation({"degradations": [{"type": t, "params": p}]})


def test_pair_records_cover_every_type_and_the_true_step_gains():
    clean = _img()
    noisy = apply_chain(clean, NOISY, 0)
    recs = J.pair_records((noisy, clean, NOISY), J.no_params, C.reading, 1,
                          np.random.default_rng(0))
    # a params_for without estimates only drops those candidates: random and true ones remain
    assert {r["type"] for r in recs} == set(J.RESTORING)
    true = [r for r in recs if r["type"] == "gaussian_noise" and r["params"] == {"sigma": 20}]
    assert true and true[0]["gain"] > 2.0
    assert all(np.isfinite(r["gain"]) for r in recs)
    # the same seed gives the same records in one process or several (spawned workers)
    pairs = [(noisy, clean, NOISY)] * 2
    one = J.judge_records(pairs, J.no_params, C.reading, 1, seed=3)
    two = J.judge_records(pairs, J.no_params, C.reading, 1, seed=3, workers=2)
    assert [(r["type"], r["params"], r["gain"]) for r in one] == \
        [(r["type"], r["params"], r["gain"]) for r in two]


def test_the_judge_learns_which_steps_gain_and_its_quantile_is_cautious():
    recs = _records(lambda s: 5.0 if s > 10 else -5.0)
    j = J.Judge(recs, quantile=0.5)
    noisy, calm = {**READ, "noise_sigma": 16.0}, {**READ, "noise_sigma": 3.0}
    assert j.gain("gaussian_noise", {"sigma": 10}, noisy, noisy) > 2.0
    assert j.gain("gaussian_noise", {"sigma": 10}, calm, calm) < -2.0
    # a type without records gets no prediction: never kept
    assert j.gain("haze", {"beta": 1.0, "airlight": 0.8}, noisy, noisy) == -np.inf
    # gains spread around the rule: a low quantile predicts lower than the median
    rng = np.random.default_rng(1)
    spread = _records(lambda s: float(rng.normal(2.0, 3.0)), n=200)
    lo, mid = J.Judge(spread, quantile=0.2), J.Judge(spread, quantile=0.5)
    assert lo.gain("gaussian_noise", {"sigma": 10}, noisy, noisy) < \
        mid.gain("gaussian_noise", {"sigma": 10}, noisy, noisy) - 1.0


def test_judge_file_round_trip_and_bad_files(tmp_path):
    j = J.Judge(_records(lambda s: s - 10), source="unit")
    p = tmp_path / "judge.json"
    j.save(p)
    k = J.Judge.load(p)
    probe = {**READ, "noise_sigma": 12.0}
    assert k.gain("gaussian_noise", {"sigma": 10}, probe, probe) == \
        j.gain("gaussian_noise", {"sigma": 10}, probe, probe)
    assert k.source == "unit"
    bad = tmp_path / "bad.json"
    for text in ("{", json.dumps({"version": 99, "records": []}),
                 json.dumps({"version": 1, "keys": [], "records": [{"type": "sharpen"}]})):
        bad.write_text(text)
        with pytest.raises(UserError, match="restore.judge .*bad.json"):
            J.Judge.load(bad)
    with pytest.raises(UserError, match="no training records"):
        J.Judge([])


def _const_judge(gain):
    recs = [{"type": "low_light", "params": {"exposure": 0.4, "gamma": 2.0}, "before": READ,
             "after": READ, "gain": gain} for _ in range(20)]
    return J.Judge(recs)


def test_the_controller_keeps_a_step_only_where_the_judge_predicts_a_gain():
    clean = _img(64)
    dark = apply_chain(clean, DARK, 0)
    kept = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL, C.reading,
                     judge=_const_judge(4.0), margin=0.5)
    assert kept.steps[0].action == "applied" and kept.steps[0].judged == pytest.approx(4.0)
    assert kept.steps[0].to_json()["judged"] == pytest.approx(4.0)
    back = C.control(dark, DARK, {"low_light": 1.0}, {}, CAL, C.reading,
                     judge=_const_judge(-4.0), margin=0.5)
    assert back.steps[0].action == "rolled_back" and "the judge predicts -4.00 dB" in \
        back.steps[0].reason
    assert np.array_equal(back.image, dark)


def test_val_calibration_under_the_judge_records_only_the_steps_it_keeps():
    clean = _img(64)
    dark = apply_chain(clean, DARK, 0)
    text = "<answer>" + json.dumps(DARK) + "</answer>"
    val, sc, f = [(dark, clean)], [{"low_light": 0.9}], [C.reading(dark)]
    th, n = C.calibrate_on_val(CAL, val, [text], sc, f, _const_judge(-4.0), 0.5)
    assert th == {} and n == {}  # nothing kept: no threshold, the judge alone decides
    th, n = C.calibrate_on_val(CAL, val, [text], sc, f, _const_judge(4.0), 0.5)
    assert n == {"low_light": 1} and th["low_light"] == -np.inf  # the kept step gained
    # without a judge every type without evidence is never applied (unchanged)
    th, _ = C.calibrate_on_val(CAL, val, [text], sc, f)
    assert th["haze"] == np.inf


def test_records_key_follows_rows_settings_and_calibration():
    rows = [{"degraded": b"a", "clean": b"b", "annotation": "{}"},
            {"degraded": b"c", "clean": b"d", "annotation": "{}"}]
    key = J.records_key(rows, CAL, 2, 0)
    assert key == J.records_key([dict(r) for r in rows], CAL, 2, 0) and len(key) == 32
    others = {J.records_key(rows[:1], CAL, 2, 0), J.records_key(rows[::-1], CAL, 2, 0),
              J.records_key(rows, CAL, 1, 0), J.records_key(rows, CAL, 2, 1),
              J.records_key(rows, {**CAL, "extra": 1}, 2, 0)}
    assert key not in others and len(others) == 5
    assert J.cache_path(key).name == f"{key}.json" and len(J.code_digest()) == 64
