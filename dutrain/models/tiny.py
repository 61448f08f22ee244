"""The tiny test/demo VLM: Qwen2-VL's architecture with a small config, random weights, and a
byte-level BPE tokenizer trained locally on our own answer/reasoning text. No network needed.

The result is an ordinary Hugging Face directory (config.json, model.safetensors, tokenizer,
preprocessor and chat template) that transformers and vLLM load like any Qwen2-VL checkpoint.
Builds are deterministic (seeded weights, fixed corpus) and cached by a hash of the spec and
the tokenizer corpus, so a second build is a directory lookup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dutrain.config.sft import PATCH_INITS, TinyModelConfig
from dutrain.runtime.cache import cache_root
from dutrain.schema import render_answer

from .prompts import INSTRUCTION

# torch, transformers, tokenizers and dutrain.degrade (scipy) are imported in the functions that
# build the model: this module comes with `import dutrain.models`, which config validation
# (TinySpec) and drivers that only resolve a model do without them (~0.5 s instead of ~5 s)

#: bump when the build recipe changes in a way the spec does not capture
#: (2: the dct inits also start the patch merger as a pass-through, see `init_merger_mean`)
RECIPE_VERSION = 2

#: Qwen2-VL's special tokens, in its order (vLLM and the processor look some up by string)
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

#: Qwen2's pre-tokenizer split: \p{N} alone keeps every digit its own token
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

#: Qwen2-VL's chat template (image and video placeholders, default system prompt)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_CONFIG = TinyModelConfig()


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults (those of `dutrain.config.sft.TinyModelConfig`, where
    each is documented): ~0.8 M parameters, 112×112 image → 16 tokens."""

    hidden_size: int = _CONFIG.hidden_size
    intermediate_size: int = _CONFIG.intermediate_size
    num_layers: int = _CONFIG.num_layers
    num_heads: int = _CONFIG.num_heads
    num_kv_heads: int = _CONFIG.num_kv_heads
    mrope_section: tuple[int, int, int] = tuple(_CONFIG.mrope_section)  # type: ignore[assignment]
    vision_depth: int = _CONFIG.vision_depth
    vision_embed_dim: int = _CONFIG.vision_embed_dim
    vision_heads: int = _CONFIG.vision_heads
    patch_size: int = _CONFIG.patch_size
    merge_size: int = _CONFIG.merge_size
    # image side (px) bounds for the processor: images are resized to fit between them
    min_image_side: int = _CONFIG.min_image_side
    max_image_side: int = _CONFIG.max_image_side
    vocab_merges: int = _CONFIG.vocab_merges
    # build settings the config does not expose
    corpus_samples: int = 2000
    max_position_embeddings: int = 4096
    seed: int = _CONFIG.seed
    #: "random" (Qwen's init), "dct": the vision tower starts as DCT band-energy features, or
    #: "dct_block": DCT plus JPEG block-boundary filters (see `block_boundary_filters`)
    patch_init: str = _CONFIG.patch_init

    def validate(self) -> None:
        head_dim = self.hidden_size // self.num_heads
        if self.hidden_size % self.num_heads or sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"tiny model: mrope_section {list(self.mrope_section)} must sum to "
                             f"head_dim/2 = {head_dim // 2} (hidden_size / num_heads / 2)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("tiny model: num_heads must be a multiple of num_kv_heads")
        if (self.vision_embed_dim % self.vision_heads
                or (self.vision_embed_dim // self.vision_heads) % 4):
            raise ValueError("tiny model: vision_embed_dim / vision_heads must be a multiple of 4")
        if self.patch_init not in PATCH_INITS:
            raise ValueError(f"tiny model: patch_init {self.patch_init!r} unknown; allowed: "
                             f"{', '.join(PATCH_INITS)}")

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def tokenizer_corpus(spec: TinySpec) -> list[str]:
    """Texts the tokenizer is trained on: rendered answers with reasoning, prompt and template."""
    from dutrain.degrade import CUE_NAMES, sample_chain, write_reasoning

    rng = np.random.default_rng(spec.seed)
    # the fixed prompt text repeats so BPE merges it into few tokens (shorter sequences)
    texts = [INSTRUCTION, "system\nYou are a helpful assistant.", "user\n", "assistant\n"] * 50
    for i in range(spec.corpus_samples):
        ann = sample_chain(rng, "ood" if i % 10 == 9 else "train")
        # cue magnitudes span what measure_cues reports; the tokenizer only needs the vocabulary
        cues = {c: float(rng.uniform(0, 1) * (100 if c in ("hf_energy", "noise") else
                                               8 if c == "edge_width" else 3 if c == "blockiness"
                                               else 1)) for c in CUE_NAMES}
        texts.append(render_answer(ann, write_reasoning(cues, ann)))
    return texts


def _train_tokenizer(spec: TinySpec, corpus: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + 256 + spec.vocab_merges, min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        model_max_length=spec.max_position_embeddings, padding_side="left",
        clean_up_tokenization_spaces=False, chat_template=CHAT_TEMPLATE)


def _model_config(spec: TinySpec, tokenizer: Any) -> Any:
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings, max_window_layers=spec.num_layers,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": list(spec.mrope_section)},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)
    vision = dict(depth=spec.vision_depth, embed_dim=spec.vision_embed_dim,
                  hidden_size=spec.hidden_size, num_heads=spec.vision_heads, mlp_ratio=4,
                  patch_size=spec.patch_size, spatial_merge_size=spec.merge_size,
                  temporal_patch_size=2)
    cfg = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (
        ids["<|endoftext|>"], ids["<|im_end|>"], ids["<|endoftext|>"])
    return cfg


def dct_patch_filters(n_filters: int, embed_dim: int, patch: int, temporal: int = 2,
                      extra_luma: Sequence[Any] = ()) -> Any:
    """Conv3d weights [embed_dim, 3, temporal, patch, patch]: `n_filters` orthonormal 2-D
    DCT-II bases in the first rows, zeros after (those dims are left for band energies).

    One eighth of the filters see chroma (R-G, B-(R+G)/2) at the lowest frequencies, the rest
    luma at frequencies spread from DC to the highest. The DC filter is scaled down and the
    others up so texture responses are not swamped by brightness after a LayerNorm.
    `extra_luma` ([patch, patch] filters, at most half the luma ones) take the places of the
    last, highest-frequency luma bases.
    """
    import torch

    n = torch.arange(patch, dtype=torch.float64)
    k = torch.arange(patch, dtype=torch.float64)[:, None]
    basis1d = torch.cos(torch.pi * (2 * n + 1) * k / (2 * patch))
    basis1d[0] *= 1 / math.sqrt(2)
    basis1d *= math.sqrt(2 / patch)
    freqs = sorted(((u, v) for u in range(patch) for v in range(patch)), key=lambda f: (sum(f), f))
    n_chroma = max(1, n_filters // 8)
    n_luma = n_filters - n_chroma
    pick = sorted(set(np.linspace(0, len(freqs) - 1, n_luma).round().astype(int).tolist()))
    luma_f = ([freqs[i] for i in pick] + [f for i, f in enumerate(freqs) if i not in pick])[:n_luma]
    w = torch.zeros(embed_dim, 3, temporal, patch, patch, dtype=torch.float64)
    luma = torch.tensor([1.0, 1.0, 1.0]) / 3
    chroma = [torch.tensor([1.0, -1.0, 0.0]) / 2, torch.tensor([-0.5, -0.5, 1.0]) / 1.5]
    bases = [basis1d[u][:, None] * basis1d[v][None, :] * (0.25 if u == v == 0 else 2.0)
             for u, v in luma_f]
    for i, f in enumerate(list(extra_luma)[:n_luma // 2]):
        bases[n_luma - 1 - i] = f
    for e, b in enumerate(bases):
        w[e] = luma[:, None, None, None] * b / temporal
    for j in range(n_chroma):
        u, v = freqs[j // 2]
        b = basis1d[u][:, None] * basis1d[v][None, :]
        w[n_luma + j] = chroma[j % 2][:, None, None, None] * b / temporal
    return w.float()


def block_boundary_filters(patch: int, block: int = 8, rows_per_filter: int = 4) -> list[Any]:
    """Luma filters [patch, patch] measuring the step across each JPEG block boundary inside a
    patch beyond what the neighbouring gradients predict: per boundary column c and group of
    rows, Σ (x[c] - x[c-1]) - ((x[c-1] - x[c-2]) + (x[c+1] - x[c])) / 2, and the same across
    rows. Smooth content gives ~0; a block edge gives its step. Empty when no boundary falls
    inside a patch (patch ≤ block), since blocks then align with patches and no filter sees one.
    """
    import torch

    out = []
    for c in range(block, patch, block):
        if c < 2 or c + 1 >= patch:
            continue
        for r0 in range(0, patch, rows_per_filter):
            f = torch.zeros(patch, patch, dtype=torch.float64)
            rows = slice(r0, r0 + rows_per_filter)
            f[rows, c], f[rows, c - 1], f[rows, c - 2], f[rows, c + 1] = 1.5, -1.5, 0.5, -0.5
            f *= 2.0 / f.norm()  # the scale of the (×2) DCT filters
            out += [f, f.T.clone()]
    return out


def init_dct_tower(model: Any, spec: TinySpec) -> None:
    """Start the vision tower as a band-energy feature extractor (an init; all of it trains).

    Degradations live in frequency bands: noise and JPEG quantisation in high ones, blur and
    down-sampling as their loss, light and haze in the DC. The patch embedding becomes a DCT
    filter bank in the first half of the width, and the first block's MLP computes each
    filter's rectified response, act(a·x) + act(-a·x) ≈ a·|x| (its hidden units in +/- pairs),
    into the second half. A LayerNorm keeps the direction of a patch vector, not its length,
    so a signed linear coefficient alone carries no band energy; the pairs hand the tower that
    energy from step one. The patch merger then passes these features on (`init_merger_mean`).
    """
    import torch

    vis = model.model.visual
    e = spec.vision_embed_dim
    half = e // 2
    a, b = 2.0, 0.5
    with torch.no_grad():
        blocks = block_boundary_filters(spec.patch_size) if spec.patch_init == "dct_block" else ()
        vis.patch_embed.proj.weight.copy_(
            dct_patch_filters(half, e, spec.patch_size, extra_luma=blocks))
        mlp = vis.blocks[0].mlp
        mlp.fc1.weight[:2 * half].zero_()
        mlp.fc1.bias[:2 * half].zero_()
        mlp.fc2.weight[:, :2 * half].zero_()
        for j in range(half):
            mlp.fc1.weight[2 * j, j] = a
            mlp.fc1.weight[2 * j + 1, j] = -a
            mlp.fc2.weight[half + j, 2 * j] = b
            mlp.fc2.weight[half + j, 2 * j + 1] = b
    init_merger_mean(vis.merger, e, spec.merge_size ** 2)


def init_merger_mean(merger: Any, embed_dim: int, group: int) -> None:
    """Start the patch merger as the mean of each tower feature over its 2×2 patch group.

    A randomly initialised merger (512 → 512 → 128 through a GELU) scrambles the band energies
    on their way to the language model: a linear probe of the type on its pooled output falls
    from 0.56 (tower output) to 0.43 (docs/experiments/demo-model.md, "Third round"). Hidden
    units in ± pairs pass a value through exactly, since GELU(z) - GELU(-z) = z. Hidden units
    beyond the pairs start at zero in and out, so no gradient reaches them and they stay unused
    (random input weights with zero output weights would let them learn; not measured yet).
    """
    import torch

    l0, l2 = merger.mlp[0], merger.mlp[2]
    n = min(embed_dim, l2.out_features, l0.out_features // 2)
    with torch.no_grad():
        for lin in (l0, l2):
            lin.weight.zero_()
            lin.bias.zero_()
        for j in range(n):
            for p in range(group):
                l0.weight[2 * j, p * embed_dim + j] = 1.0 / group
                l0.weight[2 * j + 1, p * embed_dim + j] = -1.0 / group
            l2.weight[j, 2 * j] = 1.0
            l2.weight[j, 2 * j + 1] = -1.0


def _processor(spec: TinySpec, tokenizer: Any) -> Any:
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": spec.min_image_side ** 2, "longest_edge": spec.max_image_side ** 2}
    common = dict(size=size, patch_size=spec.patch_size, merge_size=spec.merge_size,
                  temporal_patch_size=2)
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**common),
                            video_processor=Qwen2VLVideoProcessor(**common),
                            tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_tiny(spec: TinySpec, out_dir: str | os.PathLike) -> Path:
    """Build the tiny model into `out_dir` (created; must not exist or be empty)."""
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    spec.validate()
    out = Path(out_dir)
    tokenizer = _train_tokenizer(spec, tokenizer_corpus(spec))
    cfg = _model_config(spec, tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = Qwen2VLForConditionalGeneration(cfg).to(torch.float32)
    if spec.patch_init in ("dct", "dct_block"):
        init_dct_tower(model, spec)
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    _processor(spec, tokenizer).save_pretrained(out)
    (out / "dutrain_tiny.json").write_text(json.dumps(
        {"recipe": RECIPE_VERSION, "spec": dataclasses.asdict(spec)}, indent=1))
    return out


def tiny_hash(spec: TinySpec) -> str:
    h = hashlib.sha256(f"{RECIPE_VERSION}\n{spec.key()}\n".encode())
    for text in tokenizer_corpus(spec):
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def tiny_model(spec: TinySpec | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the tiny model for `spec`, built on first use (safe under concurrency)."""
    spec = spec or TinySpec()
    root = Path(cache_dir) if cache_dir else cache_root()
    final = root / f"tiny-{tiny_hash(spec)}"
    if (final / "dutrain_tiny.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        build_tiny(spec, tmp)
        try:
            os.rename(tmp, final)  # atomic; loses the race harmlessly if another process won
        except OSError:
            if not (final / "dutrain_tiny.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
