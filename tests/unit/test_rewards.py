"""Structured rewards: the properties of docs/design.md §6 and fuzzing that nothing raises."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dutrain.rewards.structured as structured
from dutrain.degrade import sample_chain
from dutrain.rewards import (
    COMPONENTS,
    format_reward,
    key_reward,
    read_answer,
    score,
    type_reward,
    value_reward,
)
from dutrain.schema import TAXONOMY, TYPES, canonical_json, render_answer

CLEAN = {"degradations": []}


def answer(obj) -> str:
    return f"<think>cues</think>\n<answer>{json.dumps(obj)}</answer>"


def chains(split: str = "train"):
    return st.integers(0, 2**32 - 1).map(
        lambda s: sample_chain(np.random.default_rng(s), split, clean_fraction=0.15))


def test_docstring_examples():
    res = doctest.testmod(structured)
    assert res.attempted >= 10 and res.failed == 0


@settings(max_examples=150, deadline=None)
@given(chains("train") | chains("ood"))
def test_perfect_answer_scores_one_everywhere(ref):
    s = score(render_answer(ref, "measured cues"), ref)
    assert s == {c: 1.0 for c in (*COMPONENTS, "total")}


def test_clean_answered_clean_is_one_and_string_reference_works():
    s = score(render_answer(CLEAN, "flat, sharp"), canonical_json(CLEAN))
    assert s["total"] == 1.0 and all(s[c] == 1.0 for c in COMPONENTS)


@settings(max_examples=100, deadline=None)
@given(chains(), st.sampled_from(TYPES))
def test_any_type_set_mismatch_lowers_type(ref, extra):
    pred = json.loads(canonical_json(ref))
    present = {d["type"] for d in pred["degradations"]}
    if extra in present:  # drop it
        pred["degradations"] = [d for d in pred["degradations"] if d["type"] != extra]
    else:  # add it (lenient reading grades it even if the stage is taken)
        p = TAXONOMY[extra].params
        pred["degradations"].append({"type": extra, "params": {x.key: x.grid()[0] for x in p}})
    assert type_reward(answer(pred), ref) < 1.0
    assert score(answer(pred), ref)["total"] < 1.0


def test_type_f1_by_hand():
    ref = {"degradations": [{"type": "haze", "params": {"beta": 1.0, "airlight": 0.8}},
                            {"type": "jpeg", "params": {"quality": 50}}]}
    # predicted {haze, gaussian_noise}: tp 1, |pred| 2, |true| 2 -> F1 0.5
    pred = {"degradations": [{"type": "haze", "params": {"beta": 1.0, "airlight": 0.8}},
                             {"type": "gaussian_noise", "params": {"sigma": 5}}]}
    assert type_reward(answer(pred), ref) == pytest.approx(0.5)
    assert type_reward(answer({"degradations": []}), ref) == 0.0  # clean vs degraded
    assert type_reward(answer(pred), CLEAN) == 0.0


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(t, p.key) for t in TYPES for p in TAXONOMY[t].params]),
       st.data())
def test_closer_value_scores_higher(tk, data):
    t, key = tk
    spec = TAXONOMY[t]
    grid = spec.param(key).grid(*spec.param(key).train)
    i = data.draw(st.integers(0, len(grid) - 1))
    j = data.draw(st.integers(0, len(grid) - 1))
    k = data.draw(st.integers(0, len(grid) - 1))
    ref = {"degradations": [{"type": t, "params": {p.key: grid[i] if p.key == key else p.grid()[0]
                                                   for p in spec.params}}]}
    p = spec.param(key)
    near, far = sorted((grid[j], grid[k]), key=lambda v: p.distance(v, grid[i]))
    if abs(p.distance(near, grid[i]) - p.distance(far, grid[i])) < 1e-9:
        return  # a tie up to float rounding (0.3 - 0.15 vs 0.45 - 0.3): no order to check

    def with_value(v):
        d = json.loads(canonical_json(ref))
        d["degradations"][0]["params"][key] = v
        return answer(d)

    assert value_reward(with_value(near), ref) > value_reward(with_value(far), ref)


def test_value_is_angle_aware():
    ref = {"degradations": [{"type": "motion_blur", "params": {"length": 9, "angle": 5}}]}
    near = answer(
        {"degradations": [{"type": "motion_blur", "params": {"length": 9, "angle": 175}}]})
    far = answer({"degradations": [{"type": "motion_blur", "params": {"length": 9, "angle": 90}}]})
    # 175 deg is 10 deg from 5 deg modulo 180; width of angle is 175
    assert value_reward(near, ref) == pytest.approx(1 - 0.5 * 10 / 175)
    assert value_reward(near, ref) > value_reward(far, ref)


def test_keys_and_off_grid_answers_are_graded_but_not_format_valid():
    ref = {"degradations": [{"type": "haze", "params": {"beta": 1.2, "airlight": 0.8}}]}
    off_grid = answer(
        {"degradations": [{"type": "haze", "params": {"beta": 1.23, "airlight": 0.8}}]})
    s = score(off_grid, ref)
    assert s["format"] == 0.0 and s["type"] == 1.0 and s["key"] == 1.0
    assert s["value"] == pytest.approx(1 - 0.5 * 0.03 / 2.3)
    extra_key = answer({"degradations": [{"type": "haze", "params": {"beta": 1.2, "airlight": 0.8,
                                                                     "depth": 3}}]})
    assert key_reward(extra_key, ref) == pytest.approx(2 / 3)
    not_a_number = answer({"degradations": [{"type": "haze", "params": {"beta": "1.2",
                                                                        "airlight": 0.8}}]})
    assert key_reward(not_a_number, ref) == pytest.approx(1 / 3)


@pytest.mark.parametrize("text", [
    "", "no tags", "<think>x</think>", "<think>x</think><answer>{bad json</answer>",
    "<think>x</think><answer>[1, 2]</answer>",
    "<think>x</think><answer>{\"degradations\": 3}</answer>",
    "<think>x</think><answer>" + "[" * 100000 + "</answer>", None, 42, b"bytes",
])
def test_malformed_scores_zero(text):
    ref = {"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}
    assert score(text, ref) == {c: 0.0 for c in (*COMPONENTS, "total")}
    assert score(text, CLEAN)["total"] == 0.0


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8)
    | st.sampled_from(list(TYPES) + ["type", "params", "degradations", "sigma", "quality"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "params", "degradations", "sigma", "quality", "beta", "x"]),
        inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300) | json_values.map(
    lambda v: ("<think>t</think><answer>"
               + json.dumps({"degradations": v} if not isinstance(v, dict) else v,
                            allow_nan=True)
               + "</answer>")),
       chains())
def test_fuzz_nothing_raises_and_scores_in_unit_interval(text, ref):
    s = score(text, ref)
    assert set(s) == {*COMPONENTS, "total"}
    assert all(0.0 <= v <= 1.0 for v in s.values())
    assert read_answer(text).valid == (s["format"] == 1.0)


def test_weights():
    ref = {"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}
    text = answer({"degradations": [{"type": "jpeg", "params": {"quality": 75}}]})
    s = score(text, ref, weights={"type": 1.0, "value": 1.0})
    assert s["total"] == pytest.approx(1.0 + (1 - 40 / 80))
    with pytest.raises(ValueError, match="unknown component.*'typo'"):
        score(text, ref, weights={"typo": 1.0})
    with pytest.raises(ValueError, match="'value' must be a finite number >= 0"):
        score(text, ref, weights={"value": -1})
    assert format_reward(text) == 1.0
