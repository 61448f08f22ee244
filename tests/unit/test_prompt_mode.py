"""Prompt modes (docs/sft.md, "Measurement tool in the prompt"): the measured cues in the user
turn ('cues') versus stated by the model ('plain'), and the mode read from the model directory."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from dutrain.config import ConfigError, load_config
from dutrain.config.sft import PROMPT_MODES, SFTConfig
from dutrain.degrade import (
    apply_chain,
    measure_cues,
    sample_chain,
    stated_cues,
    tool_line,
    write_reasoning,
)
from dutrain.models import (
    PROMPT_FILE,
    Prompter,
    encode_prompts,
    encode_sft,
    load_processor,
    prompt_mode,
    prompt_text,
    tiny_model,
    write_prompt_mode,
)
from dutrain.models.prompts import encode_prompt_completion, prompt_texts
from dutrain.schema import canonicalize


@pytest.fixture(scope="module")
def processor():
    return load_processor(tiny_model())


def _degraded(seed: int, size: int = 112) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    ann = canonicalize(sample_chain(rng))
    return apply_chain(clean, ann, seed), ann


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_tool_line_states_exactly_the_sentence_write_reasoning_starts_with():
    for seed in range(6):
        img, ann = _degraded(seed)
        cues = measure_cues(img)
        full = write_reasoning(cues, ann)
        sentence = stated_cues(cues)
        assert full.startswith(sentence + " ")
        assert tool_line(cues) == "Measured by the tool: " + sentence
        # without the stated cues the reasoning is the rest of the plain one (evidence only)
        short = write_reasoning(cues, ann, state_cues=False)
        assert "Cues:" not in short
        if ann["degradations"]:
            assert full == f"{sentence} {short}"


def test_cues_mode_moves_the_cue_sentence_from_target_to_prompt(processor):
    from dutrain.sft.data import make_target

    for seed in range(4):
        img, ann = _degraded(seed)
        sentence = stated_cues(measure_cues(img))
        png = _png(img)
        plain = make_target(png, json.dumps(ann))
        cues = make_target(png, json.dumps(ann), prompt="cues")
        assert sentence in plain and sentence not in cues and "Cues:" not in cues
        assert cues.startswith("<think>") and "<answer>" in cues
        # answer-only targets are the same in both modes
        assert make_target(png, ann, "answer", "cues") == make_target(png, ann, "answer")
        # the prompt of the same (decoded) image states the sentence in cues mode only
        arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        [p_cues] = prompt_texts(processor, [arr], "cues")
        [p_plain] = prompt_texts(processor, [arr], "plain")
        assert tool_line(measure_cues(img)) in p_cues and sentence not in p_plain
        assert p_plain == prompt_text(processor)
        assert p_cues.index("<|image_pad|>") < p_cues.index("Which degradations") \
            < p_cues.index("Measured by the tool:")
        assert p_cues.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="allowed: plain, cues"):
        make_target(png, ann, prompt="tool")


def test_sft_rows_carry_their_cues_and_the_trainer_prompts_with_them(processor):
    import torch

    from dutrain.sft.data import add_targets
    from dutrain.sft.loop import Batcher

    imgs, anns = zip(*(_degraded(s) for s in range(3)))
    batch = {"degraded": np.array([_png(i) for i in imgs], dtype=object),
             "annotation": np.array([json.dumps(a) for a in anns], dtype=object)}
    cued = add_targets(dict(batch), "reasoning", "cues")
    assert [json.loads(c) for c in cued["cues"]] == [measure_cues(i) for i in imgs]
    assert "cues" not in add_targets(dict(batch), "reasoning", "plain")  # plain: no column
    # the trainer states the row's cues (measured once, above), never measures them again
    given = {**measure_cues(imgs[0]), "noise": 12.345}
    assert tool_line(given) != tool_line(measure_cues(imgs[0]))
    rows = [{"degraded": _png(imgs[0]), "target": "t", "cues": given}]
    ids = Batcher(processor, rows, torch.device("cpu"), "cues")([0])["input_ids"][0]
    assert tool_line(given) in processor.tokenizer.decode(ids)


def test_engine_prompter_plain_is_the_shared_prompt_and_cues_is_per_image(processor):
    (a, _), (b, _) = _degraded(0), _degraded(1)
    plain = Prompter(processor)
    assert plain(a) is plain(b) and plain(a) == prompt_text(processor)
    cues = Prompter(processor, "cues")
    assert cues(a) == prompt_text(processor, measure_cues(a)) != cues(b)
    assert cues(Image.fromarray(a)) == cues(a)  # PIL or array, same pixels, same prompt
    assert tool_line(measure_cues(b)) in cues(b)
    with pytest.raises(ValueError, match="allowed: plain, cues"):
        Prompter(processor, "tool")


def test_cues_encoders_agree_with_each_other_and_with_given_cues(processor):
    (a, _), (b, _) = _degraded(2), _degraded(3)
    sft = encode_sft(processor, [a, b], ["<think></think>", "<think></think>"], mode="cues")
    gen = encode_prompts(processor, [a], "cues")
    n = gen["input_ids"].shape[1]
    assert sft["input_ids"][0, :n].tolist() == gen["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert tool_line(measure_cues(b)) in tok.decode(sft["input_ids"][1])
    given = encode_prompt_completion(processor, [a, b], [[1], [2]], mode="cues",
                                     cues=[measure_cues(a), measure_cues(b)])
    measured = encode_prompt_completion(processor, [a, b], [[1], [2]], mode="cues")
    assert given["input_ids"].tolist() == measured["input_ids"].tolist()
    plain = encode_prompt_completion(processor, [a, b], [[1], [2]])
    assert plain["starts"][0] < measured["starts"][0]  # the tool's line lengthens the prompt
    with pytest.raises(ValueError, match="2 images but 1 cue sets"):
        encode_prompt_completion(processor, [a, b], [[1], [2]], mode="cues",
                                 cues=[measure_cues(a)])


def test_prompt_mode_is_read_from_the_model_directory(tmp_path):
    assert prompt_mode(tmp_path) == "plain"  # no file: plain (models from elsewhere, old runs)
    write_prompt_mode(tmp_path, "cues")
    assert json.loads((tmp_path / PROMPT_FILE).read_text()) == {"prompt": "cues", "grid_factor": 1}
    assert prompt_mode(tmp_path) == "cues"
    write_prompt_mode(tmp_path, "plain")
    assert prompt_mode(str(tmp_path)) == "plain"
    (tmp_path / PROMPT_FILE).write_text('{"prompt": "tool"}')
    with pytest.raises(ValueError, match="allowed: plain, cues"):
        prompt_mode(tmp_path)
    (tmp_path / PROMPT_FILE).write_text("not json")
    with pytest.raises(ValueError, match="not a prompt-mode file"):
        prompt_mode(tmp_path)
    with pytest.raises(ValueError, match="allowed: plain, cues"):
        write_prompt_mode(tmp_path, "tool")


def test_sft_config_prompt_defaults_to_plain_and_rejects_unknown_modes():
    assert PROMPT_MODES == ("plain", "cues")
    assert load_config(SFTConfig).prompt == "plain"
    assert load_config(SFTConfig, overrides=["prompt=cues"]).prompt == "cues"
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, overrides=["prompt=tool"])
    assert "prompt" in str(e.value) and "'plain'" in str(e.value) and "'cues'" in str(e.value)


def test_sft_help_shows_the_prompt_mode():
    from dutrain.cli import _verb_help

    text = _verb_help("sft")
    assert "prompt" in text and "plain | cues" in text


def test_dpo_dataset_prompts_carry_the_cues_of_a_cues_model():
    from dutrain.models import INSTRUCTION
    from dutrain.offline.dpo import dpo_dataset

    (a, _), (b, _) = _degraded(4), _degraded(5)
    images = {"a": a, "b": b}
    pairs = [{"prompt_id": k, "chosen": "<think></think>", "rejected": "<think>x</think>"}
             for k in ("a", "b", "a")]
    plain = dpo_dataset(pairs, images)
    assert [p[0]["content"][1]["text"] for p in plain["prompt"]] == [INSTRUCTION] * 3
    cues = dpo_dataset(pairs, images, {k: measure_cues(v) for k, v in images.items()})
    texts = [p[0]["content"][1]["text"] for p in cues["prompt"]]
    assert texts[0] == texts[2] != texts[1]
    assert texts[1].endswith("\n" + tool_line(measure_cues(b)))
