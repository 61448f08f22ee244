"""Learner workers: Ray actors forming one torch.distributed group (gloo on CPU, NCCL on GPU).

Each learner holds the policy wrapped in DDP (and, with `loss.kl_coef > 0`, a frozen copy of the
initial policy as reference). `train_step(shard)` recomputes log-probs of the sampled tokens,
applies the clipped GRPO objective of `dutrain.rl.loss` with token weights normalised over the
*global* batch, and steps AdamW; DDP averages gradients, so each local loss is scaled by the
world size to make the update equal to one big batch's. Rank 0 serves the weights
(safetensors bytes) for the rollout engines and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dutrain.config.rl import RLConfig
from dutrain.io.storage import copy_tree
from dutrain.models import answer_grid, load_model, load_processor, prompt_mode, write_prompt_mode
from dutrain.models.engine import state_dict_bytes, untied
from dutrain.models.prompts import CueCache, encode_prompt_completion, encode_prompts

from .batch import Batch
from .checkpoint import fetch_dir, local_staging
from .loss import grpo_token_loss, token_logprobs

#: tokens that only the prompt may hold: a sampled one would be read as an image slot
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                 "<|video_pad|>")


def vision_token_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def encode_sequences(processor: Any, images: list[Any], completions: list[list[int]],
                     mode: str = "plain", cues: list[Any] | None = None) -> dict[str, Any]:
    """Prompt (as `dutrain.models.prompts` formats it in prompt mode `mode`, with the images'
    `cues` when already measured) + sampled completion ids, right padded.

    Returns the model inputs plus `targets` / `mask` aligned with the logits of positions
    0..L-2: `mask[i, j]` is 1 where `targets[i, j]` is a completion token.
    """
    enc = encode_prompt_completion(processor, images, completions, mode=mode, cues=cues)
    ids, starts = enc["input_ids"], enc["starts"]
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    mask = torch.zeros((ids.shape[0], ids.shape[1] - 1), dtype=torch.float32)
    for i, (s, n) in enumerate(zip(starts, lengths)):
        mask[i, s - 1:n - 1] = 1.0
    return {**enc, "targets": ids[:, 1:], "mask": mask, "starts": starts}


def pad_per_token(values: list[list[float]], starts: list[int], width: int) -> "Any":
    """Per-completion-token values placed on the logits frame (B, width) used by `mask`."""
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, (v, s) in enumerate(zip(values, starts)):
        if len(v):
            out[i, s - 1:s - 1 + len(v)] = torch.tensor(v, dtype=torch.float32)
    return out


def weight_stats(state: dict[str, Any]) -> dict[str, float]:
    """Layout-independent checksum of a set of weights: count, Σw and Σw² in float64.

    Shared tensors (tied embeddings) count once; zero padding (vLLM pads the vocabulary) does
    not change any of the three.
    """
    total, sq, count = 0.0, 0.0, 0
    for v in untied(state).values():
        d = v.detach().to(torch.float64)
        total += float(d.sum())
        sq += float((d * d).sum())
        count += int(torch.count_nonzero(d))
    return {"sum": total, "sum_sq": sq, "nonzero": count}


def set_warmup_lr(opt: Any, lr: float, warmup_steps: int) -> float:
    """Set the learning rate of the optimiser's next step: linear warm-up to `lr`, then constant.

    The position comes from the optimiser's own step count, so a run resumed from a checkpoint
    (which holds the optimiser state) continues the schedule where it stopped. Why warm up: a
    cold AdamW's first step moves every weight by about `lr` whatever its gradient's size
    (m̂/√v̂ = ±1); on the demo model that moved some digit log-probs by 13 nats (docs/rl.md).
    """
    done = max((int(st["step"]) for st in opt.state.values() if "step" in st), default=0)
    now = lr * min(1.0, (done + 1) / warmup_steps) if warmup_steps else lr
    for group in opt.param_groups:
        group["lr"] = now
    return now


def _add_token_sums(sums: dict[str, float], mask: Any, entropy: Any,
                    stats: dict[str, Any]) -> None:
    """Add a micro-batch's token count and per-token entropy / loss statistics to `sums`."""
    sums["tokens"] += float(mask.sum())
    sums["entropy"] += float((entropy * mask).sum())
    for k in ("kl", "clipped", "is_weight", "is_truncated", "mismatch_kl"):
        if k in stats:
            sums[k] += float((stats[k] * mask).sum())


class LearnerWorker:
    """One learner rank. Created by `LearnerGroup`; methods are called through Ray."""

    def __init__(self, rank: int, world: int, model_dir: str, cfg: RLConfig):
        self.rank, self.world, self.cfg = rank, world, cfg
        self.model_dir = str(model_dir)
        lc = cfg.learner
        torch.set_num_threads(max(1, round(lc.cpus_per_worker)))
        self.device = "cuda" if lc.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"
        os.environ["DUTRAIN_RANK"] = str(rank)  # tracking helpers: side effects on rank 0 only
        self.model: Any = None

    # ------------------------------------------------------------------------------ set-up
    def address(self) -> tuple[str, int]:
        """(node IP, free port) for the process group's rendezvous (asked of rank 0)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int, init_dir: str | None = None) -> int:
        """Join the process group, load the policy (from `init_dir` on resume) and optimiser."""
        lc = self.cfg.learner
        backend = lc.backend if lc.backend != "auto" else \
            ("nccl" if self.device == "cuda" else "gloo")
        if master_addr in ("127.0.0.1", "localhost"):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo on loopback
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}",
                                rank=self.rank, world_size=self.world)
        torch.manual_seed(self.cfg.seed + self.rank)
        src = self.model_dir
        if init_dir:  # resume: this node's copy of the checkpoint
            self.init_dir = fetch_dir(init_dir, self.cfg.storage)
            src = str(Path(self.init_dir) / "model")
        self.processor = load_processor(self.model_dir)
        # the starting model's prompt mode: the rollout engines read the same file
        self.prompt = prompt_mode(self.model_dir)
        self.grid_factor = answer_grid(self.model_dir)
        self.cues = CueCache()
        model = load_model(src, dtype=lc.dtype, device=self.device)
        if lc.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        self.model = model
        self.ddp = DDP(model, device_ids=[0] if self.device == "cuda" else None)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
        if init_dir:
            self.opt.load_state_dict(torch.load(Path(self.init_dir) / "optimizer.pt",
                                                map_location=self.device, weights_only=True))
        self.ref = None
        if self.cfg.loss.kl_coef > 0:
            self.ref = load_model(self.model_dir, dtype=lc.dtype, device=self.device).eval()
            self.ref.requires_grad_(False)
        self.banned = vision_token_ids(self.processor.tokenizer)
        return sum(p.numel() for p in model.parameters())

    # ------------------------------------------------------------------------------ training
    def _forward_logprobs(self, model: Any, enc: dict[str, Any]) -> tuple[Any, Any]:
        inputs = {k: v.to(self.device) for k, v in enc.items()
                  if k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                           "mm_token_type_ids")}
        logits = model(**inputs).logits[:, :-1]
        return token_logprobs(logits, enc["targets"].to(self.device), self.cfg.rollout.temperature,
                              self.banned)

    def train_step(self, shard: Batch) -> dict[str, float]:
        """One optimiser step per epoch on this rank's shard; returns sums for the controller to
        reduce."""
        t0 = time.perf_counter()
        lc = self.cfg.learner
        micro, encs = self._encode(shard)
        old = self._old_logprobs(encs)
        sums = dict.fromkeys(("entropy", "kl", "clipped", "is_weight", "is_truncated",
                              "mismatch_kl", "tokens", "loss"), 0.0)
        grad_norm = 0.0
        for epoch in range(lc.epochs):
            for m, (idx, enc) in enumerate(zip(micro, encs)):
                loss, entropy, st, mask = self._micro_step(
                    shard, idx, enc, old[m] if old is not None else None,
                    sync=m == len(micro) - 1)
                if epoch == 0:
                    _add_token_sums(sums, mask, entropy, st)
                sums["loss"] += float(loss) / lc.epochs
            grad_norm = self._optimizer_step()
        sums["grad_norm"] = grad_norm
        sums["seconds"] = time.perf_counter() - t0
        sums["sequences"] = float(len(shard))
        sums["has_kl"] = float(self.ref is not None)
        return sums

    def _encode(self, shard: Batch) -> tuple[list[list[int]], list[dict[str, Any]]]:
        """The shard's micro-batches (row indices) and their model inputs."""
        n, size = len(shard), self.cfg.learner.micro_batch_size
        micro = [list(range(i, min(n, i + size))) for i in range(0, n, size)]
        encs = []
        for idx in micro:
            images = [shard["image"][i] for i in idx]
            encs.append(encode_sequences(
                self.processor, images, [shard["completion_ids"][i] for i in idx], self.prompt,
                self.cues.for_prompt(images, self.prompt)))
        return micro, encs

    def _old_logprobs(self, encs: list[dict[str, Any]]) -> list[Any] | None:
        """With several epochs the policy moves between passes: the pre-update log-probs, frozen.
        None with one epoch (the ratio is then taken to the detached current log-probs)."""
        if self.cfg.learner.epochs <= 1:
            return None
        with torch.no_grad():
            return [self._forward_logprobs(self.ddp.module, e)[0] for e in encs]

    def _micro_step(self, shard: Batch, idx: list[int], enc: dict[str, Any], logp_old: Any,
                    sync: bool) -> tuple[Any, Any, dict[str, Any], Any]:
        """Forward and backward of one micro-batch (DDP all-reduces the gradients only when
        `sync`): the GRPO token loss weighted by the token weights. Returns the loss, the
        entropy, the loss's per-token statistics and the completion mask (all detached)."""
        lossc = self.cfg.loss
        mask = enc["mask"].to(self.device)
        rollout_lp = pad_per_token([shard["logprobs"][i] for i in idx], enc["starts"],
                                   mask.shape[1]).to(self.device)
        adv = torch.tensor([shard["advantage"][i] for i in idx],
                           dtype=torch.float32, device=self.device)[:, None]
        w = torch.tensor([shard["token_weight"][i] for i in idx],
                         dtype=torch.float32, device=self.device)[:, None] * mask
        with contextlib.nullcontext() if sync else self.ddp.no_sync():
            logp, entropy = self._forward_logprobs(self.ddp, enc)
            logp_old = logp_old.to(self.device) if logp_old is not None else logp.detach()
            ref_lp = None
            if self.ref is not None:
                with torch.no_grad():
                    ref_lp = self._forward_logprobs(self.ref, enc)[0]
            tok_loss, st = grpo_token_loss(
                logp, logp_old, rollout_lp, adv, clip_low=lossc.clip_low,
                clip_high=lossc.clip_high, importance_sampling=lossc.importance_sampling,
                is_cap=lossc.is_cap, logp_ref=ref_lp, kl_coef=lossc.kl_coef)
            loss = (tok_loss * w).sum()
            (loss * self.world).backward()  # DDP averages: scaled to one big batch's gradient
        return loss.detach(), entropy.detach(), st, mask

    def _optimizer_step(self) -> float:
        """Clip (or just measure) the gradient norm, set the warm-up lr, step; the norm."""
        lc = self.cfg.learner
        if lc.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.ddp.parameters(), lc.grad_clip))
        else:
            grads = [p.grad for p in self.ddp.parameters() if p.grad is not None]
            grad_norm = float(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads)))
        set_warmup_lr(self.opt, lc.lr, lc.warmup_steps)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return grad_norm

    # ------------------------------------------------------------------------------ weights
    def weights_payload(self) -> tuple[bytes, float]:
        """The policy as safetensors bytes (what the rollout engines load), and seconds taken."""
        t0 = time.perf_counter()
        data = state_dict_bytes(self.ddp.module.state_dict())
        return data, time.perf_counter() - t0

    def weight_stats(self) -> dict[str, float]:
        return weight_stats(self.ddp.module.state_dict())

    def greedy(self, images: list[Any], max_tokens: int) -> list[list[int]]:
        """transformers' greedy completions (token ids, prompt excluded) on the current weights."""
        enc = encode_prompts(self.processor, images, self.prompt,
                             self.cues.for_prompt(images, self.prompt))
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if "mm_token_type_ids" not in enc:
            image_id = self.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            enc["mm_token_type_ids"] = (enc["input_ids"] == image_id).long()
        model = self.ddp.module
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                     bad_words_ids=[[t] for t in self.banned])
        finally:
            model.train()
        eos = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad = self.processor.tokenizer.pad_token_id
        res = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            ids = []
            for t in row:
                if t == pad and eos != pad:
                    break
                ids.append(t)
                if t == eos:
                    break
            res.append(ids)
        return res

    # ---------------------------------------------------------------------------- checkpoint
    def save(self, uri: str, optimizer: bool = True) -> str:
        """Rank 0: a checkpoint at `uri` (`model/` HF directory + `optimizer.pt`), or with
        `optimizer=False` just the HF model directory at `uri` (the run's final model)."""
        staging, remote = local_staging(uri)
        d = Path(staging)
        model_dir = d / "model" if optimizer else d
        self.ddp.module.save_pretrained(model_dir, safe_serialization=True)
        self.processor.save_pretrained(model_dir)
        # the model keeps the prompt mode and answer grid it was trained in
        write_prompt_mode(model_dir, self.prompt, self.grid_factor)
        if optimizer:
            torch.save(self.opt.state_dict(), d / "optimizer.pt")
        if remote:
            copy_tree(d, uri, self.cfg.storage)
            shutil.rmtree(d, ignore_errors=True)
        return uri

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
