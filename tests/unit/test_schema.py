"""Answer schema: taxonomy grid, canonical JSON, render/parse round trip, robustness."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dutrain.schema import (
    STAGE_NAMES,
    TAXONOMY,
    TYPES,
    AnnotationError,
    answer_json_schema,
    canonical_json,
    canonicalize,
    param_spec,
    parse_answer,
    render_answer,
)


@st.composite
def annotations(draw, split=None):
    """Random valid annotations: at most one type per stage, values on the grid."""
    by_stage: dict[int, list[str]] = {}
    for t, s in TAXONOMY.items():
        by_stage.setdefault(s.stage, []).append(t)
    chosen = []
    for stage in sorted(by_stage):
        if draw(st.booleans()):
            chosen.append(draw(st.sampled_from(by_stage[stage])))
    entries = []
    for t in draw(st.permutations(chosen)):
        params = {p.key: draw(st.sampled_from(p.grid())) for p in TAXONOMY[t].params}
        entries.append({"type": t, "params": params})
    return {"degradations": entries}


@given(annotations(), st.text(max_size=200))
def test_render_parse_round_trip(ann, reasoning):
    res = parse_answer(render_answer(ann, reasoning))
    assert res.ok, res.errors
    assert res.annotation == canonicalize(ann)


@given(annotations())
def test_canonical_json_is_stable_and_parses_back(ann):
    text = canonical_json(ann)
    assert canonical_json(json.loads(text)) == text
    assert json.loads(text) == canonicalize(ann)


@given(st.sampled_from([(t, p.key) for t in TYPES for p in TAXONOMY[t].params]),
       st.floats(-100, 400, allow_nan=False))
def test_snap_is_idempotent_and_on_grid(tk, value):
    p = param_spec(*tk)
    s = p.snap(value)
    assert p.snap(s) == s
    assert p.on_grid(s) and p.in_range(s)


@settings(max_examples=300)
@given(st.text())
def test_parse_never_raises_on_arbitrary_text(text):
    res = parse_answer(text)
    assert res.annotation is None or isinstance(res.annotation, dict)


@st.composite
def mutated_answers(draw):
    text = render_answer(draw(annotations()), draw(st.text(max_size=30)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["del", "ins", "dup"]))
        if op == "del":
            text = text[:i] + text[i + 1:]
        elif op == "ins":
            piece = draw(st.sampled_from(list('{}[]",:<>/0123456789.-e ') + ["null", "NaN"]))
            text = text[:i] + piece + text[i:]
        else:
            text = text[:i] + text[i:i + 20] + text[i:]
    return text


@settings(max_examples=300)
@given(mutated_answers())
def test_parse_never_raises_on_mutated_answers(text):
    res = parse_answer(text)
    if res.annotation is not None:
        canonical_json(res.annotation)  # whatever validates is canonical


# Hostile answers as a function of their size n, with two sizes on the same side of the answer
# length cap (so both take the same path through the parser).
HOSTILE = {
    "unclosed brackets": (lambda n: "<think>x</think><answer>" + "[" * n + "</answer>", 50_000),
    "deep objects": (lambda n: "<think>x</think><answer>" + '{"a":' * n + "1" + "}" * n
                     + "</answer>", 5_000),
    "long reasoning": (lambda n: "<think>" + "y" * n + "</think><answer>{}</answer>", 1_250_000),
    "repeated tags": (lambda n: "<answer>" * n, 25_000),
    "nesting under the cap": (lambda n: "<think></think><answer>" + "[" * n + "]" * n
                              + "</answer>", 2_000),
}


def _seconds_per_parse(text: str) -> float:
    import timeit
    timer = timeit.Timer(lambda: parse_answer(text))
    calls, total = timer.autorange()  # repeats until >= 0.2 s: a stable figure even for fast parses
    return total / calls


@pytest.mark.parametrize("name", list(HOSTILE))
def test_parse_scales_linearly_on_hostile_input(name):
    """Four times the hostile text takes about four times as long (< 10x): no backtracking or
    nesting blow-up. A ratio in one run, never an absolute time (the machines are noisy)."""
    build, n = HOSTILE[name]
    small, large = build(n), build(4 * n)
    for text in (small, large):
        res = parse_answer(text)
        assert res.annotation is None and res.errors
    ratio = _seconds_per_parse(large) / _seconds_per_parse(small)
    assert ratio < 10, f"{name}: 4x the text took {ratio:.1f}x the time"


def test_parse_reports_every_problem():
    text = ('<answer>{"degradations": [{"type": "gausian_blur", "params": {"sigma": 1}}, '
            '{"type": "jpeg", "params": {"quality": 3}}, '
            '{"type": "jpeg", "params": {"quality": 30}}, '
            '{"type": "haze", "params": {"beta": 1.23, "airlight": 0.8, "depth": 2}}]}</answer>')
    errors = parse_answer(text).errors
    assert errors == [
        "missing <think> tag",
        "degradations[0]: unknown type 'gausian_blur' (did you mean 'gaussian_blur'?)",
        "degradations[1] (jpeg.quality): value 3 off range [5, 95]",
        "degradations[2]: duplicate type 'jpeg'",
        "degradations[3] (haze): unknown key 'depth'; allowed: beta, airlight",
        "degradations[3] (haze.beta): value 1.23 off grid (step 0.1); nearest 1.2",
    ]


def test_missing_tags_and_bad_json():
    assert parse_answer("hello").errors == ["missing <think> tag", "missing <answer> tag"]
    res = parse_answer("<think>a</think><answer>{bad</answer>")
    assert res.annotation is None and res.errors[0].startswith("bad JSON")
    # same stage twice is not a chain
    res = parse_answer('<think></think><answer>{"degradations": '
                       '[{"type": "gaussian_blur", "params": {"sigma": 1.0}}, '
                       '{"type": "defocus_blur", "params": {"radius": 2.0}}]}</answer>')
    assert "share stage 3" in res.errors[0]


def test_clean_answer_and_canonical_format():
    ann = {"degradations": [{"type": "jpeg", "params": {"quality": 35}},
                            {"type": "gaussian_blur", "params": {"sigma": 1.7}}]}
    assert canonical_json(ann) == ('{"degradations": '
                                   '[{"type": "gaussian_blur", "params": {"sigma": 1.7}}, '
                                   '{"type": "jpeg", "params": {"quality": 35}}]}')
    assert canonical_json({"degradations": []}) == '{"degradations": []}'
    haze = {"degradations": [{"type": "haze", "params": {"airlight": 0.6, "beta": 1}}]}
    assert canonical_json(haze) == (
        '{"degradations": [{"type": "haze", "params": {"beta": 1.0, "airlight": 0.60}}]}')
    with pytest.raises(AnnotationError):
        canonical_json({"degradations": [{"type": "haze", "params": {"beta": 1}}]})


def test_taxonomy_matches_design():
    assert TYPES == ("haze", "rain", "gaussian_blur", "motion_blur", "defocus_blur", "low_light",
                     "downsample", "gaussian_noise", "poisson_noise", "jpeg")
    assert STAGE_NAMES == {1: "scene", 2: "scene", 3: "optics", 4: "exposure", 5: "sampling",
                           6: "sensor", 7: "codec"}
    peak = param_spec("poisson_noise", "peak")
    assert peak.grid()[:9] == [3, 4, 5, 6, 7, 8, 9, 10, 15] and peak.grid()[-1] == 200
    assert param_spec("motion_blur", "angle").distance(175, 5) == 10
    assert param_spec("haze", "beta").grid_for("ood")[0] == 2.6


@pytest.mark.parametrize("t", TYPES)
def test_severity_spans_the_train_range_and_ood_is_the_strong_side(t):
    spec = TAXONOMY[t]
    key, _ = spec.strength
    p = spec.param(key)
    base = {q.key: q.grid()[0] for q in spec.params}
    train = [v for v in p.grid() if p.train[0] <= v <= p.train[1]]
    sev = [spec.severity({**base, key: v}) for v in train]
    assert min(sev) == 0.0 and max(sev) == 1.0 and all(0.0 <= s <= 1.0 for s in sev)
    assert sev == sorted(sev) or sev == sorted(sev, reverse=True)  # monotone in the value
    # docs/design.md puts every OOD range beyond the strong end: the sign agrees with it
    assert all(spec.severity({**base, key: v}) == 1.0 for v in p.grid_for("ood")
               if not p.train[0] < v < p.train[1])


def test_json_schema_accepts_valid_and_rejects_invalid():
    import jsonschema
    schema = answer_json_schema()
    jsonschema.validate({"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"degradations": [{"type": "jpeg", "params": {"quality": 3.5}}]},
                            schema)
