"""The demo recipe learns: a CI-sized `dutrain sft` run with the demo YAMLs (fixture `demo_sft`)
beats the untrained model on held-out (test-split) images, and the types it has learned at that
size are recognised well above their share of the test set (issue 9's per-type floor; the
types not yet learned are listed in NOT_YET)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from dutrain.evaluate.metrics import score_sample, split_metrics
from dutrain.io.dataset import decode_png, read_table
from dutrain.models import load_model, load_processor, resolve_model
from dutrain.models.prompts import prompt_mode
from dutrain.schema import CLEAN, types_of
from dutrain.sft.loop import transformers_completions

TEST_ROWS = 240
# Measured on 2 cores with the fixture's CI-sized run (seeded end to end), 240 test images, with
# the session-12 recipe (prompt: cues, aux_loss: 0.5): format 1.00 (untrained 0.00), type
# accuracy 0.433 (0.346 with the plain recipe before it); recall vs prior share: haze 0.84 / 0.15,
# rain 0.52 / 0.10, low light 0.93 / 0.12, downsample 0.53 / 0.13, Poisson noise 0.92 / 0.05.
LEARNED = ("haze", "rain", "low_light", "downsample", "poisson_noise")
# Not reliably above their prior at CI size (the full demo run learns them partly: recall
# 0.12-0.72, docs/experiments/demo-model.md, ninth round): measured recall clean, Gaussian /
# motion / defocus blur and Gaussian noise 0.00, JPEG 0.21 (prior 0.12).
NOT_YET = ("clean", "gaussian_blur", "motion_blur", "defocus_blur", "gaussian_noise", "jpeg")


def type_priors(rows) -> dict[str, float]:
    """Each type's share of the test rows: the recall of a guesser that draws answers from the
    label distribution, the floor every type must beat."""
    counts: Counter[str] = Counter()
    for r in rows:
        ann = json.loads(r["annotation"]) if isinstance(r["annotation"], str) else r["annotation"]
        types = set(types_of(ann)) or {CLEAN}
        counts.update(types)
    return {t: c / len(rows) for t, c in counts.items()}


def _test_metrics(model_dir, rows, prompt: str) -> dict[str, float]:
    comps = transformers_completions(load_model(model_dir), load_processor(model_dir),
                                     [decode_png(r["degraded"]) for r in rows],
                                     max_new_tokens=320, prompt=prompt)
    return split_metrics("test", [score_sample(r["sample_id"], "test", c, r["annotation"])
                                  for r, c in zip(rows, comps)])


@pytest.mark.slow
def test_demo_recipe_learns_format_and_types_above_their_prior(demo_sft):
    rows = read_table(str(demo_sft.data), ["test"], ["sample_id", "degraded", "annotation"],
                      limit=TEST_ROWS).to_pylist()
    prompt = prompt_mode(demo_sft.model)  # the demo recipe's prompt, as eval serves it
    assert prompt == demo_sft.cfg.prompt
    trained = _test_metrics(demo_sft.model, rows, prompt)
    untrained = _test_metrics(resolve_model("tiny", tiny=demo_sft.cfg.tiny.spec()), rows, prompt)
    prior = type_priors(rows)
    recall = {t: trained.get(f"test/type_recall/{t}", 0.0) for t in prior}
    print({"trained": trained, "untrained": untrained, "prior": prior})
    assert set(prior) == set(LEARNED) | set(NOT_YET)  # every type (and clean) is in the test set
    assert untrained["test/format_valid"] == 0.0
    assert trained["test/format_valid"] >= 0.9
    assert trained["test/type_exact"] >= 0.35
    below = {t: (round(recall[t], 3), round(prior[t], 3)) for t in LEARNED
             if recall[t] < 1.5 * prior[t]}
    assert not below, f"learned types below 1.5x their prior (recall, prior): {below}"
