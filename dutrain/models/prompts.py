"""THE prompt and chat formatting shared by SFT, RL and evaluation (docs/design.md §5).

A prompt is one user turn: the image first, then the instruction. Each model formats it with
its own chat template (the tiny model carries Qwen2-VL's), so a production checkpoint and the
tiny model see the same conversation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

# torch is imported in the encoders: this module comes with `import dutrain.models`, which
# config validation does without torch (see dutrain/models/tiny.py)

INSTRUCTION = (
    "Which degradations were applied to this image? Reason from measured cues inside "
    "<think></think>, then give the degradations with their parameters as JSON inside "
    "<answer></answer>.")
IMAGE_PAD = "<|image_pad|>"


def messages(target: str | None = None) -> list[dict[str, Any]]:
    """The chat: user (image, instruction) and, for training, the assistant's target."""
    conv: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
    if target is not None:
        conv.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return conv


def prompt_text(processor: Any) -> str:
    """The chat-formatted prompt ending with the assistant header (one image placeholder)."""
    return processor.apply_chat_template(messages(), tokenize=False, add_generation_prompt=True)


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


def encode_prompts(processor: Any, images: list[Any]) -> dict[str, Any]:
    """Processor outputs for a batch of prompts (left padded), ready for `model.generate`."""
    text = prompt_text(processor)
    out = processor(text=[text] * len(images), images=[to_pil(im) for im in images],
                    return_tensors="pt", padding=True)
    return dict(out)


def encode_images(processor: Any, images: list[Any]) -> dict[str, Any]:
    """The image processor's outputs (`pixel_values`, `image_grid_thw`) for `images`: pass them
    as `vision` to encode several completions of the same images without processing them again."""
    return processor.image_processor(images=[to_pil(im) for im in images], return_tensors="pt")


def encode_prompt_completion(processor: Any, images: list[Any], completions: list[list[int]],
                             vision: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prompt + completion token ids per image, right padded: the model inputs (`input_ids`,
    `attention_mask`, `pixel_values`, `image_grid_thw`, `mm_token_type_ids`) and `starts`, the
    prompt length of each row (its first completion position).

    The prompt is tokenized with its image placeholder expanded to the image's token count and
    the completion appended after the assistant header, so the boundary is exact whatever the
    template.
    """
    import torch

    if len(images) != len(completions):
        raise ValueError(f"{len(images)} images but {len(completions)} completions")
    tok = processor.tokenizer
    vision = encode_images(processor, images) if vision is None else vision
    merge = processor.image_processor.merge_size ** 2
    text = prompt_text(processor)
    prompts: dict[int, list[int]] = {}  # by image token count
    rows, starts = [], []
    for i, comp in enumerate(completions):
        n_img = int(vision["image_grid_thw"][i].prod()) // merge
        if n_img not in prompts:
            prompts[n_img] = tok(text.replace(IMAGE_PAD, IMAGE_PAD * n_img),
                                 add_special_tokens=False)["input_ids"]
        p = prompts[n_img]
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
               vision: dict[str, Any] | None = None) -> dict[str, Any]:
    """A training batch: prompt + target + end of turn (`encode_prompt_completion`), labels
    -100 outside the assistant turn; the batch is right padded. `vision`: `encode_images` of
    `images`, when already computed.
    """
    import torch

    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    tok = processor.tokenizer
    eot = end_of_turn_ids(tok)
    enc = encode_prompt_completion(
        processor, images, [tok(t, add_special_tokens=False)["input_ids"] + eot for t in targets],
        vision)
    ids, att = enc["input_ids"], enc["attention_mask"]
    assistant = torch.arange(ids.shape[1])[None, :] >= torch.tensor(enc["starts"])[:, None]
    lab = torch.where(att.bool() & assistant, ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": att, "labels": lab,
            "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"],
            "mm_token_type_ids": enc["mm_token_type_ids"]}
