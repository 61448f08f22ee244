"""The grid factor (docs/design.md §3, "Grid factor"): every key's grid k times coarser, followed
by generation, SFT targets, the parser, the grammar, the rewards and the metrics."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dutrain.config import ConfigError, load_config
from dutrain.config.generate import GenerateConfig
from dutrain.config.sft import SFTConfig
from dutrain.degrade import sample_chain
from dutrain.evaluate.metrics import score_sample, split_metrics
from dutrain.models.engine import answer_grammar
from dutrain.models.prompts import PROMPT_FILE, answer_grid, write_prompt_mode
from dutrain.rewards import score
from dutrain.schema import (
    MAX_GRID_FACTOR,
    TAXONOMY,
    answer_json_schema,
    canonical_json,
    check_annotation,
    check_grid_factor,
    parse_answer,
    render_answer,
    snap_annotation,
    taxonomy_at,
)

FACTORS = list(range(1, MAX_GRID_FACTOR + 1))
KEYS = [(t, p.key) for t, s in TAXONOMY.items() for p in s.params]


@pytest.mark.parametrize("k", FACTORS)
def test_a_coarse_grid_is_a_subset_of_the_contract_grid_that_covers_every_train_range(k):
    for t, key in KEYS:
        fine, coarse = TAXONOMY[t].param(key), taxonomy_at(k)[t].param(key)
        grid = coarse.grid()
        assert grid and all(fine.on_grid(v) and fine.in_range(v) for v in grid), (t, key)
        assert coarse.grid_for("train"), (t, key)  # every key keeps a train value to draw
        assert coarse.decimals == fine.decimals  # written as the contract writes it
        if k > 1:  # the steps between neighbours are k fine steps
            assert coarse.step == pytest.approx(fine.step * k)
            assert len(grid) < len(fine.grid())
    assert taxonomy_at(1) is TAXONOMY


@pytest.mark.parametrize("bad", [0, MAX_GRID_FACTOR + 1, 2.0, True, "2"])
def test_a_bad_grid_factor_names_what_is_allowed(bad):
    with pytest.raises(ValueError, match=f"integer from 1 to {MAX_GRID_FACTOR}"):
        check_grid_factor(bad)


@settings(max_examples=60, deadline=None)
@given(k=st.sampled_from(FACTORS), which=st.sampled_from(KEYS), u=st.floats(0, 1))
def test_snapping_lands_on_the_coarse_grid_at_its_nearest_point(k, which, u):
    t, key = which
    fine, coarse = TAXONOMY[t].param(key), taxonomy_at(k)[t].param(key)
    lo, hi = fine.train
    v = fine.snap(lo + u * (hi - lo))  # a true value of the dataset
    s = coarse.snap(v)
    assert coarse.on_grid(s) and fine.on_grid(s) and fine.in_range(s)
    nearest = min(coarse.grid(), key=lambda g: abs(g - v))
    assert abs(s - v) <= abs(nearest - v) + 1e-9


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.sampled_from(FACTORS),
       split=st.sampled_from(["train", "ood"]))
def test_chains_drawn_at_a_factor_lie_on_its_grid_and_stay_valid_annotations(seed, k, split):
    ann = sample_chain(np.random.default_rng(seed), split, grid_factor=k)
    assert check_annotation(ann, grid_factor=k)[1] == []
    assert check_annotation(ann)[1] == []  # still the contract's annotation
    if split == "ood":  # one key outside its train range, also on a coarse grid
        assert any(not (TAXONOMY[d["type"]].param(key).train[0] <= v
                        <= TAXONOMY[d["type"]].param(key).train[1])
                   for d in ann["degradations"] for key, v in d["params"].items())


def test_factor_one_draws_exactly_what_the_contract_draws():
    for seed in range(50):
        for split in ("train", "ood"):
            a = sample_chain(np.random.default_rng(seed), split)
            b = sample_chain(np.random.default_rng(seed), split, grid_factor=1)
            assert a == b


def test_the_parser_reads_a_coarse_model_on_its_grid():
    true = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.7}},
                             {"type": "jpeg", "params": {"quality": 35}}]}
    coarse = snap_annotation(true, 4)
    assert coarse == {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.6}},
                                       {"type": "jpeg", "params": {"quality": 36}}]}
    fine_text = render_answer(true, "cues")
    coarse_text = render_answer(coarse, "cues")
    assert parse_answer(coarse_text, 4).ok and parse_answer(coarse_text).ok
    res = parse_answer(fine_text, 4)
    assert not res.ok
    assert any("off grid (step 0.4); nearest 1.6" in e for e in res.errors)
    assert any("off grid (step 4); nearest 36" in e for e in res.errors)
    # rewards: format needs the model's grid; values are graded against the truth
    s = score(fine_text, canonical_json(true), grid_factor=4)
    assert s["format"] == 0 and s["type"] == 1 and s["value"] == 1
    s = score(coarse_text, true, grid_factor=4)
    assert s["format"] == 1  # the grid's rounding costs what it costs: 0.1 of 3.6, 1 of 80
    assert s["value"] == pytest.approx(1 - (0.1 / 3.6 + 1 / 80) / 2)


def test_the_coarse_grammar_compiles_and_admits_only_coarse_answers():
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string as accepts

    grammar = xgrammar.Grammar.from_ebnf(answer_grammar(4))
    true = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.7}}]}
    assert accepts(grammar, render_answer(snap_annotation(true, 4), "soft edges"))
    assert not accepts(grammar, render_answer(true, "soft edges"))


@pytest.mark.parametrize("k", [1, 2, 8])
def test_grammar_and_schema_list_exactly_the_coarse_grid(k):
    grammar = answer_grammar(k)
    schema = answer_json_schema(grid_factor=k)
    variants = {v["properties"]["type"]["const"]: v for v in
                schema["properties"]["degradations"]["items"]["anyOf"]}
    for t, key in KEYS:
        p = taxonomy_at(k)[t].param(key)
        line = re.search(rf"^v_{t}_{key} ::= (.*)$", grammar, re.M).group(1)
        assert [json.loads(x) for x in line.split(" | ")] == [p.format(v) for v in p.grid()]
        assert variants[t]["properties"]["params"]["properties"][key]["enum"] == p.grid()


def test_metrics_report_the_grids_own_error_and_count_steps_on_it():
    true = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.7}}]}
    coarse = render_answer(snap_annotation(true, 4), "")
    one = split_metrics("val", [score_sample("a", "val", coarse, true)])
    four = split_metrics("val", [score_sample("a", "val", coarse, true, grid_factor=4)])
    width = 4.0 - 0.4
    assert one["val/value_nmae"] == four["val/value_nmae"] == pytest.approx(0.1 / width)
    assert one["val/value_nmae_grid"] == 0  # the truth lies on the contract's grid
    assert four["val/value_nmae_grid"] == pytest.approx(0.1 / width)  # 1.7 → 1.6 is the floor
    assert one["val/value_within_1_step"] == 1 and four["val/value_within_1_step"] == 1
    assert one["val/format_valid"] == four["val/format_valid"] == 1
    fine = render_answer({"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.3}}]},
                         "")  # 0.4 off: four fine steps, one coarse step; off the coarse grid
    one = split_metrics("val", [score_sample("a", "val", fine, true)])
    four = split_metrics("val", [score_sample("a", "val", fine, true, grid_factor=4)])
    assert one["val/value_within_1_step"] == 0 and four["val/value_within_1_step"] == 1
    assert four["val/format_valid"] == 0


def test_the_model_directory_records_its_answer_grid(tmp_path):
    assert answer_grid(tmp_path) == 1  # no file: the contract's grid
    (tmp_path / PROMPT_FILE).write_text('{"prompt": "plain"}')  # written before the option
    assert answer_grid(tmp_path) == 1
    write_prompt_mode(tmp_path, "cues", 4)
    assert json.loads((tmp_path / PROMPT_FILE).read_text()) == {"prompt": "cues", "grid_factor": 4}
    assert answer_grid(tmp_path) == 4
    (tmp_path / PROMPT_FILE).write_text('{"prompt": "plain", "grid_factor": 3.5}')
    with pytest.raises(ValueError, match=f"{PROMPT_FILE}.*integer from 1 to {MAX_GRID_FACTOR}"):
        answer_grid(tmp_path)


def test_sft_targets_are_snapped_and_the_configs_bound_the_factor():
    from PIL import Image

    from dutrain.data.shard import encode_png
    from dutrain.sft.data import make_target

    png = encode_png(np.asarray(Image.new("RGB", (32, 32), (90, 120, 150))), 1)
    true = {"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}
    assert '"quality": 35' in make_target(png, true, "answer")
    assert '"quality": 32' in make_target(png, true, "answer", grid_factor=8)  # 35 → 32, not 40
    assert '"quality": 32' in make_target(png, json.dumps(true), "reasoning", grid_factor=8)
    assert load_config(SFTConfig, overrides={"grid_factor": 8}).grid_factor == 8
    for cls in (SFTConfig, GenerateConfig):
        with pytest.raises(ConfigError, match="grid_factor"):
            load_config(cls, overrides={"grid_factor": MAX_GRID_FACTOR + 1})


def test_the_dataset_id_of_a_contract_grid_run_does_not_change():
    from dutrain.data.generate import gen_params

    base = load_config(GenerateConfig, overrides={"sources": ["builtin"]})
    coarse = load_config(GenerateConfig, overrides={"sources": ["builtin"], "grid_factor": 2})
    assert "grid_factor" not in gen_params(base)  # datasets made before the option keep their id
    assert gen_params(coarse)["grid_factor"] == 2


def test_a_stage_hash_ignores_options_left_at_their_default():
    from dutrain.pipeline import StageJob, _hash

    def h(**kw):
        return _hash(StageJob("sft", "sft", "sft", load_config(SFTConfig, overrides=kw)))

    assert h(max_steps=50) == h(max_steps=50, grid_factor=1)  # a new option at its default
    assert h(max_steps=50) != h(max_steps=50, grid_factor=2)
    assert h(max_steps=50) != h(max_steps=60)
