"""VLM build/load, prompt formatting and the one vLLM engine wrapper (docs/design.md §2).

`resolve_model("tiny" | dir | s3://… | hub id)` → a local HF directory; `load_model` /
`load_processor` for transformers; `dutrain.models.engine.VLLMEngine` for vLLM (imported
lazily: vLLM is heavy and optional on a training worker).
"""

from .loading import check_model_dir, load_model, load_processor, resolve_model
from .prompts import (
    INSTRUCTION,
    PROMPT_FILE,
    Prompter,
    answer_grid,
    encode_images,
    encode_prompts,
    encode_sft,
    image_cues,
    messages,
    prompt_mode,
    prompt_text,
    to_pil,
    write_prompt_mode,
)
from .tiny import TinySpec, tiny_model

__all__ = ["check_model_dir", "load_model", "load_processor", "resolve_model", "INSTRUCTION",
           "PROMPT_FILE", "Prompter", "answer_grid", "encode_images", "encode_prompts",
           "encode_sft", "image_cues", "messages", "prompt_mode", "prompt_text", "to_pil",
           "write_prompt_mode", "TinySpec", "tiny_model"]
