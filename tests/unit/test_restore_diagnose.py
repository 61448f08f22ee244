"""restore.diagnose: the mixed annotations (true types + predicted values, predicted types +
true values) and the attribution of the gap to the oracle."""

from __future__ import annotations

import pytest

from dutrain.restore import diagnose as D

BLUR = {"type": "gaussian_blur", "params": {"sigma": 2.0}}
JPEG = {"type": "jpeg", "params": {"quality": 30}}


def ann(*ds):
    return {"degradations": list(ds)}


def test_oracle_type_keeps_the_predicted_values_and_fills_the_missing_ones():
    true = ann(BLUR, JPEG)
    pred = ann({"type": "gaussian_blur", "params": {"sigma": 1.0}},
               {"type": "rain", "params": {"density": 0.05, "length": 10, "angle": 0}})
    asked = []

    def fill(t):
        asked.append(t)
        return {"quality": 50}
    mixed, filled = D.oracle_type(true, pred, fill)
    assert mixed == ann({"type": "gaussian_blur", "params": {"sigma": 1.0}},
                        {"type": "jpeg", "params": {"quality": 50}})
    assert filled == 1 and asked == ["jpeg"]
    # an unparsed answer: every true type is filled; a clean truth stays clean
    assert D.oracle_type(true, None, lambda t: {"sigma": 1.5} if t == "gaussian_blur"
                         else {"quality": 40})[1] == 2
    assert D.oracle_type(ann(), pred, fill) == (ann(), 0)


def test_oracle_values_keep_the_predicted_types():
    true = ann(BLUR)
    pred = ann({"type": "gaussian_blur", "params": {"sigma": 1.0}}, JPEG)
    assert D.oracle_values(true, pred) == ann(BLUR, JPEG)  # true sigma; jpeg is not in true
    assert D.oracle_values(true, None) == ann()
    assert D.oracle_values(ann(), pred) == pred  # a clean image named degraded stays wrong


def test_attribution_splits_the_gap_and_names_the_cause():
    m = {}
    for sfx, (ident, orc, plain, ot, ov) in {
            "": (25.0, 35.0, 24.0, 33.0, 26.0),
            "/haze": (15.0, 50.0, 18.0, 18.0, 48.0),  # the values are wrong
            "/rain": (28.0, 40.0, 27.0, 39.0, 28.0),  # the type is wrong
            "/jpeg": (35.5, 35.9, 32.0, 35.0, 32.0),  # the type, and the operator gains little
            "/clean": (60.0, 60.0, 44.0, 60.0, 44.0),  # named degraded: the type (no operator)
            }.items():
        for k, v in zip(("identity", "oracle", "predicted", "oracle_type", "oracle_values"),
                        (ident, orc, plain, ot, ov)):
            m[f"test/psnr/{k}{sfx}"] = v
    out, lines = D.attribution("test", m, {"_total": 12, "haze": 3, "rain": 3, "jpeg": 4,
                                              "clean": 2})
    assert out["test/gap/oracle"] == 11.0
    assert out["test/gap/values/haze"] == pytest.approx(32.0)
    assert out["test/gap/type/haze"] == pytest.approx(2.0)
    assert out["test/gap/operator/jpeg"] == pytest.approx(0.4)
    rows = {ln.split("|")[1].strip(): ln.split("|")[-2].strip() for ln in lines
            if ln.startswith("| ") and not ln.startswith("| type")}
    assert rows["haze"] == "values" and rows["rain"] == "type"
    assert rows["jpeg"] == "type (operator gains < 1 dB)"
    assert rows["clean"] == "type"
    assert "gaussian_blur" not in rows  # no metrics for it: no row
    assert D.cause(0.2, 0.1, 0.3, 5.0) == "-"
    assert D.cause(3.0, 2.0, 2.3, 5.0) == "values+type"
    assert D.filled_share([1, 0, 2], [2, 1, 1]) == 0.75
