"""SFT data pieces without Ray: targets, batch order replay, LR schedule (fast)."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dutrain.degrade import apply_chain, measure_cues
from dutrain.schema import canonical_json, parse_answer
from dutrain.sft.data import batch_order, make_target
from dutrain.sft.loop import lr_factor


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_targets_parse_back_to_the_annotation_and_cite_measured_cues():
    rng = np.random.default_rng(0)
    clean = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    ann = {"degradations": [{"type": "gaussian_noise", "params": {"sigma": 30}}]}
    deg = apply_chain(clean, ann, seed=1)
    t = make_target(_png(deg), canonical_json(ann))
    res = parse_answer(t)
    assert res.ok and res.annotation == ann
    assert f"noise {measure_cues(deg)['noise']:.1f}" in res.reasoning
    short = make_target(_png(deg), ann, mode="answer")
    assert parse_answer(short).annotation == ann and parse_answer(short).reasoning == ""


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), batch=st.integers(1, 12), seed=st.integers(0, 99),
       rank=st.integers(0, 3), cut=st.integers(0, 30))
def test_batch_order_replays_from_any_step(n, batch, seed, rank, cut):
    full = [idx.tolist() for _, (_, idx) in zip(range(40), batch_order(n, batch, seed, rank, 0))]
    resumed = [idx.tolist() for _, (_, idx) in zip(range(40 - cut),
                                                   batch_order(n, batch, seed, rank, cut))]
    assert resumed == full[cut:]
    assert all(len(b) == batch and all(0 <= i < n for i in b) for b in full)
    if n >= batch:  # an epoch visits each row at most once
        per_epoch = n // batch
        first = [i for b in full[:per_epoch] for i in b]
        assert len(set(first)) == len(first)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 10, 100, 0.1) for s in range(101)]
    assert f[0] == 0.1 and f[9] == 1.0 and abs(f[10] - 1.0) < 1e-9
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert abs(f[100] - 0.1) < 1e-9


def test_vision_tower_gets_its_own_learning_rate():
    from dutrain.models import load_model, tiny_model
    from dutrain.sft.loop import param_groups

    model = load_model(tiny_model())
    rest, vision = param_groups(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert vision["lr"] == 1e-4 and rest["lr"] == 1e-3
    assert all(".visual." in f".{names[id(p)]}" for p in vision["params"])
    assert not any(".visual." in f".{names[id(p)]}" for p in rest["params"])
    assert len(vision["params"]) + len(rest["params"]) == len(list(model.parameters()))
