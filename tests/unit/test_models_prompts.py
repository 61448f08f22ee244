"""Prompt/chat formatting, SFT label masking, the tiny tokenizer and the answer grammar."""

from __future__ import annotations

import numpy as np
import pytest
import xgrammar
from hypothesis import given, settings
from hypothesis import strategies as st
from xgrammar.testing import _is_grammar_accept_string as grammar_accepts

from dutrain.degrade import sample_chain
from dutrain.models import encode_prompts, encode_sft, load_processor, prompt_text, tiny_model
from dutrain.models.engine import answer_grammar
from dutrain.models.tiny import SPECIAL_TOKENS, TinySpec
from dutrain.schema import parse_answer, render_answer


@pytest.fixture(scope="module")
def processor():
    return load_processor(tiny_model())


def _img(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_prompt_puts_image_before_instruction(processor):
    text = prompt_text(processor)
    assert text.index("<|image_pad|>") < text.index("Which degradations")
    assert text.endswith("<|im_start|>assistant\n")


def test_sft_labels_cover_exactly_the_assistant_turn(processor):
    targets = ["<think>Cues: noise 12.5.</think>\n<answer>{\"degradations\": []}</answer>",
               "<think>x</think>\n<answer>{}</answer>"]
    b = encode_sft(processor, [_img(0), _img(1)], targets)
    tok = processor.tokenizer
    for i, t in enumerate(targets):
        lab = b["labels"][i]
        kept = lab[lab != -100].tolist()
        assert tok.decode(kept) == t + "<|im_end|>"
        # the labelled tokens are the last non-pad tokens of the row
        n = int(b["attention_mask"][i].sum())
        assert b["input_ids"][i, n - len(kept):n].tolist() == kept
    # 112x112 with patch 14, merge 2 → 16 image tokens per sample
    assert int(b["mm_token_type_ids"].sum()) == 2 * 16
    assert b["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]


def test_sft_prompt_matches_the_processor_prompt(processor):
    """The hand-expanded prompt of encode_sft equals what the HF processor builds for generate."""
    b = encode_sft(processor, [_img(2)], ["<think></think>"])
    p = encode_prompts(processor, [_img(2)])
    n = p["input_ids"].shape[1]
    assert b["input_ids"][0, :n].tolist() == p["input_ids"][0].tolist()
    assert np.allclose(b["pixel_values"].numpy(), p["pixel_values"].numpy())


def test_sft_rejects_mismatched_lengths(processor):
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        encode_sft(processor, [_img(0), _img(1)], ["a"])


def test_tiny_tokenizer_splits_digits_and_matches_config(processor):
    import json
    tok = processor.tokenizer
    pieces = tok.tokenize("sigma 12.75")
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "7", "5"]
    cfg = json.loads((tiny_model() / "config.json").read_text())
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg["text_config"]["vocab_size"] == len(tok)
    assert all(tok.convert_tokens_to_ids(t) == i for i, t in enumerate(SPECIAL_TOKENS))
    text = render_answer({"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}, "ok")
    assert tok.decode(tok(text)["input_ids"]) == text


def test_tiny_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="mrope_section"):
        TinySpec(mrope_section=(4, 4, 4)).validate()


_GRAMMAR = xgrammar.Grammar.from_ebnf(answer_grammar())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["train", "ood"]))
def test_grammar_accepts_every_canonical_answer(seed, split):
    ann = sample_chain(np.random.default_rng(seed), split)
    text = render_answer(ann, "Cues: noise 3.1, edge width 1.2 px.")
    assert parse_answer(text).ok
    assert grammar_accepts(_GRAMMAR, text)


@pytest.mark.parametrize("answer", [
    '{"degradations": [{"type": "jpeg", "params": {"quality": 3}}]}',       # off range
    '{"degradations": [{"type": "jpeg", "params": {"quality": 35.0}}]}',    # not canonical
    '{"degradations": [{"type": "jpeg", "params": {"quality": 35}}, '
    '{"type": "haze", "params": {"beta": 1.0, "airlight": 0.60}}]}',        # out of stage order
    '{"degradations": [{"type": "fog", "params": {}}]}',                    # unknown type
])
def test_grammar_rejects_invalid_answers(answer):
    assert not grammar_accepts(_GRAMMAR, f"<think>x</think>\n<answer>{answer}</answer>")
