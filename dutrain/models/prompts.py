"""THE prompt and chat formatting shared by SFT, RL and evaluation (docs/design.md §5).

A prompt is one user turn: the image first, then the instruction. Each model formats it with
its own chat template (the tiny model carries Qwen2-VL's), so a production checkpoint and the
tiny model see the same conversation.

Prompt modes (docs/sft.md, "Measurement tool in the prompt"): 'plain' is the instruction alone;
'cues' adds a line with the cues measured on THIS image (`dutrain.degrade.tool_line` of
`measure_cues`), which the reasoning target then no longer restates. The mode is a property of
the trained model: SFT writes it into every saved model directory (`write_prompt_mode`,
dutrain_prompt.json) and everything that prompts a model reads it back (`prompt_mode`; no file:
'plain'). The same file records the model's answer grid (`answer_grid`; no file or key: 1), the
grid factor its targets were snapped to (docs/design.md §3, "Grid factor"), which every stage
that reads the model's answers parses and scores them on. The encoders take `mode` ('plain' by
default) and, optionally, the cues already measured (`cues`, one mapping per image).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from dutrain.config.sft import PROMPT_MODES

# torch is imported in the encoders: this module comes with `import dutrain.models`, which
# config validation does without torch (see dutrain/models/tiny.py)

INSTRUCTION = (
    "Which degradations were applied to this image? Reason from measured cues inside "
    "<think></think>, then give the degradations with their parameters as JSON inside "
    "<answer></answer>.")
IMAGE_PAD = "<|image_pad|>"
#: the file, beside config.json, that records a model's prompt mode
PROMPT_FILE = "dutrain_prompt.json"

Cues = Mapping[str, float]


def check_prompt_mode(mode: str) -> str:
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode {mode!r} unknown; allowed: {', '.join(PROMPT_MODES)}")
    return mode


def prompt_mode(model_dir: str | os.PathLike) -> str:
    """The prompt mode a model was trained with: its dutrain_prompt.json, else 'plain'."""
    p = Path(model_dir) / PROMPT_FILE
    if not p.is_file():
        return "plain"
    try:
        mode = json.loads(p.read_text())["prompt"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"'{p}' is not a prompt-mode file ({{\"prompt\": \"plain\"|\"cues\"}}):"
                         f" {exc}") from None
    try:
        return check_prompt_mode(mode)
    except ValueError as exc:
        raise ValueError(f"'{p}': {exc}") from None


def answer_grid(model_dir: str | os.PathLike) -> int:
    """The grid factor a model answers on: its dutrain_prompt.json's `grid_factor`, else 1."""
    from dutrain.schema import check_grid_factor

    p = Path(model_dir) / PROMPT_FILE
    if not p.is_file():
        return 1
    try:
        return check_grid_factor(json.loads(p.read_text()).get("grid_factor", 1))
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"'{p}': {exc}") from None


def write_prompt_mode(model_dir: str | os.PathLike, mode: str, grid_factor: int = 1) -> None:
    """Record the prompt `mode` and answer `grid_factor` in the (local) model directory."""
    from dutrain.schema import check_grid_factor

    Path(model_dir, PROMPT_FILE).write_text(json.dumps(
        {"prompt": check_prompt_mode(mode), "grid_factor": check_grid_factor(grid_factor)}) + "\n")


def image_cues(image: Any) -> dict[str, float]:
    """The cues measured on `image` (uint8 H×W×3 array or PIL image), as the target and the
    measurement tool state them."""
    from dutrain.degrade import measure_cues  # scipy: only where cues are measured

    return measure_cues(np.asarray(to_pil(image)))


def user_text(cues: Cues | None = None) -> str:
    """The user turn's text: the instruction, then (cues mode) the measurement tool's line."""
    if cues is None:
        return INSTRUCTION
    from dutrain.degrade.reasoning import tool_line

    return f"{INSTRUCTION}\n{tool_line(cues)}"


def messages(target: str | None = None, cues: Cues | None = None) -> list[dict[str, Any]]:
    """The chat: user (image, instruction [, the measured `cues`]) and, for training, the
    assistant's target."""
    conv: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": user_text(cues)}]}]
    if target is not None:
        conv.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return conv


def prompt_text(processor: Any, cues: Cues | None = None) -> str:
    """The chat-formatted prompt ending with the assistant header (one image placeholder)."""
    return processor.apply_chat_template(messages(cues=cues), tokenize=False,
                                         add_generation_prompt=True)


def prompt_cues(images: Sequence[Any], mode: str,
                cues: Sequence[Cues] | None = None) -> list[Cues | None]:
    """Per image: None in plain mode, else its cues (`cues` when given, else measured)."""
    if check_prompt_mode(mode) == "plain":
        return [None] * len(images)
    if cues is None:
        return [image_cues(im) for im in images]
    if len(cues) != len(images):
        raise ValueError(f"{len(images)} images but {len(cues)} cue sets")
    return list(cues)


def prompt_texts(processor: Any, images: Sequence[Any], mode: str = "plain",
                 cues: Sequence[Cues] | None = None) -> list[str]:
    """The prompt of each image: one shared text in plain mode, per image in cues mode."""
    if check_prompt_mode(mode) == "plain":
        return [prompt_text(processor)] * len(images)
    return [prompt_text(processor, c) for c in prompt_cues(images, mode, cues)]


class CueCache:
    """`image_cues` remembered by image content (a digest of its pixels), so the same image
    sampled several times (RL groups, K offline samples, epochs) is measured once."""

    def __init__(self, max_items: int = 4096):
        self.max_items = max_items
        self._cues: dict[tuple[Any, ...], dict[str, float]] = {}

    def __call__(self, image: Any) -> dict[str, float]:
        arr = np.ascontiguousarray(np.asarray(to_pil(image)))
        key = (arr.shape, hashlib.blake2b(arr.data, digest_size=16).digest())
        if key not in self._cues:
            if len(self._cues) >= self.max_items:
                self._cues.clear()
            self._cues[key] = image_cues(arr)
        return self._cues[key]

    def many(self, images: Sequence[Any]) -> list[dict[str, float]]:
        return [self(im) for im in images]

    def for_prompt(self, images: Sequence[Any], mode: str) -> list[dict[str, float]] | None:
        """What the encoders' `cues` takes in prompt `mode`: the images' cues, or None (plain
        mode measures nothing)."""
        return self.many(images) if check_prompt_mode(mode) == "cues" else None


class Prompter:
    """`prompter(image)` → the prompt text for one request (the vLLM engine's). Plain mode
    returns one text built once; cues mode states the image's measured cues (`CueCache`)."""

    def __init__(self, processor: Any, mode: str = "plain"):
        self.processor, self.mode = processor, check_prompt_mode(mode)
        self._plain = prompt_text(processor) if mode == "plain" else None
        self.cues = CueCache()

    def __call__(self, image: Any) -> str:
        if self._plain is not None:
            return self._plain
        return prompt_text(self.processor, self.cues(image))


def to_pil(image: Any) -> Image.Image:
    """uint8 H×W×3 array or PIL image → RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 H×W×3 or a PIL image; got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn in the chat template (<|im_end|> for Qwen)."""
    return [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def encode_prompts(processor: Any, images: list[Any], mode: str = "plain",
                   cues: Sequence[Cues] | None = None) -> dict[str, Any]:
    """Processor outputs for a batch of prompts (left padded), ready for `model.generate`."""
    out = processor(text=prompt_texts(processor, images, mode, cues),
                    images=[to_pil(im) for im in images], return_tensors="pt", padding=True)
    return dict(out)


def encode_images(processor: Any, images: list[Any]) -> dict[str, Any]:
    """The image processor's outputs (`pixel_values`, `image_grid_thw`) for `images`: pass them
    as `vision` to encode several completions of the same images without processing them again."""
    return processor.image_processor(images=[to_pil(im) for im in images], return_tensors="pt")


def encode_prompt_completion(processor: Any, images: list[Any], completions: list[list[int]],
                             vision: dict[str, Any] | None = None, *, mode: str = "plain",
                             cues: Sequence[Cues] | None = None) -> dict[str, Any]:
    """Prompt + completion token ids per image, right padded: the model inputs (`input_ids`,
    `attention_mask`, `pixel_values`, `image_grid_thw`, `mm_token_type_ids`) and `starts`, the
    prompt length of each row (its first completion position).

    The prompt is tokenized with its image placeholder expanded to the image's token count and
    the completion appended after the assistant header, so the boundary is exact whatever the
    template. `mode` / `cues`: the prompt mode, and the images' cues if already measured.
    """
    import torch

    if len(images) != len(completions):
        raise ValueError(f"{len(images)} images but {len(completions)} completions")
    tok = processor.tokenizer
    vision = encode_images(processor, images) if vision is None else vision
    merge = processor.image_processor.merge_size ** 2
    texts = prompt_texts(processor, images, mode, cues)
    prompts: dict[tuple[str, int], list[int]] = {}  # by text and image token count
    rows, starts = [], []
    for i, comp in enumerate(completions):
        n_img = int(vision["image_grid_thw"][i].prod()) // merge
        key = (texts[i], n_img)
        if key not in prompts:
            prompts[key] = tok(texts[i].replace(IMAGE_PAD, IMAGE_PAD * n_img),
                               add_special_tokens=False)["input_ids"]
        p = prompts[key]
        rows.append(p + list(comp))
        starts.append(len(p))
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        att[i, :len(r)] = 1
    image_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    return {"input_ids": ids, "attention_mask": att, "pixel_values": vision["pixel_values"],
            "image_grid_thw": vision["image_grid_thw"],
            "mm_token_type_ids": (ids == image_id).long(), "starts": starts}


def encode_sft(processor: Any, images: list[Any], targets: list[str],
               vision: dict[str, Any] | None = None, *, mode: str = "plain",
               cues: Sequence[Cues] | None = None) -> dict[str, Any]:
    """A training batch: prompt + target + end of turn (`encode_prompt_completion`), labels
    -100 outside the assistant turn; the batch is right padded. `vision`: `encode_images` of
    `images`, when already computed; `mode` / `cues`: as `encode_prompt_completion`.
    """
    import torch

    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    tok = processor.tokenizer
    eot = end_of_turn_ids(tok)
    enc = encode_prompt_completion(
        processor, images, [tok(t, add_special_tokens=False)["input_ids"] + eot for t in targets],
        vision, mode=mode, cues=cues)
    ids, att = enc["input_ids"], enc["attention_mask"]
    assistant = torch.arange(ids.shape[1])[None, :] >= torch.tensor(enc["starts"])[:, None]
    lab = torch.where(att.bool() & assistant, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": att, "labels": lab,
            "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"],
            "mm_token_type_ids": enc["mm_token_type_ids"]}
