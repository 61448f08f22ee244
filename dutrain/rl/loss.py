"""GRPO pieces: group advantages, token log-probs, the clipped objective and its normalisers.

Pure functions (numpy / torch tensors in, tensors out) so each can be checked by hand.

Loss per completion token t of sequence i (A_i its group advantage):

    ratio = exp(logp_new - logp_old)
    pg    = -min(ratio * A_i, clip(ratio, 1 - eps_low, 1 + eps_high) * A_i)
    pg   *= min(exp(logp_old - logp_rollout), cap)      # truncated IS (TIS), if enabled
    loss  = pg + kl_coef * k3(logp_ref, logp_new)

`logp_old` is the learner's log-prob before this update (equal to `logp_new` in value on the first
pass), `logp_rollout` what vLLM reported when sampling. Their gap is numerical mismatch plus, in
async mode, the policy lag; the truncated weight corrects it without letting it explode.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

NORMS = ("grpo", "dapo", "dr_grpo")


def group_advantages(rewards: np.ndarray, scale: bool = True, eps: float = 1e-4) -> np.ndarray:
    """(P, G) rewards → advantages r - mean_g, divided by the group std when `scale`.

    >>> group_advantages(np.array([[1.0, 0.0], [0.5, 0.5]])).round(3).tolist()
    [[1.0, -1.0], [0.0, 0.0]]
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be (prompts, group) shaped, got {r.shape}")
    adv = r - r.mean(axis=1, keepdims=True)
    if scale:
        adv = adv / (r.std(axis=1, keepdims=True) + eps)
    return adv


def token_weights(lengths: Sequence[int], norm: str, num_seqs: int, num_tokens: int,
                  max_tokens: int) -> list[float]:
    """Weight of each token of each sequence so that Σ weight·loss is the batch loss.

    `num_seqs` / `num_tokens` count the whole global batch (all learners), so shards weighted
    separately add up to the same loss as one big batch.
    - grpo: mean over each sequence's tokens, then mean over sequences (weights 1/(T_i·N));
    - dapo: mean over every token of the batch (1/ΣT), long answers count per token;
    - dr_grpo: sum over tokens / (N · max_tokens), no length bias at all.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown loss norm {norm!r} (allowed: {', '.join(NORMS)})")
    if norm == "grpo":
        return [1.0 / (max(1, t) * num_seqs) for t in lengths]
    if norm == "dapo":
        return [1.0 / max(1, num_tokens)] * len(lengths)
    return [1.0 / (num_seqs * max_tokens)] * len(lengths)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   banned: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target under softmax(logits / T) with `banned` tokens removed, and the
    entropy there — the distribution vLLM samples from and reports (processed log-probs).

    logits (..., V), targets (...) → two tensors shaped like targets.
    """
    logits = logits.float() / temperature
    if len(banned):
        # a large finite value, not -inf: keeps 0 · log 0 = 0 in the entropy
        logits = logits.index_fill(-1, torch.as_tensor(list(banned), device=logits.device), -1e9)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def k3_kl(logp_ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π ‖ π_ref): exp(d) - d - 1 with d = logp_ref - logp (≥ 0)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


def grpo_token_loss(logp: torch.Tensor, logp_old: torch.Tensor, logp_rollout: torch.Tensor,
                    advantages: torch.Tensor, *, clip_low: float, clip_high: float,
                    importance_sampling: str = "truncated", is_cap: float = 2.0,
                    logp_ref: torch.Tensor | None = None,
                    kl_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (same shape as `logp`) and per-token diagnostics (detached)."""
    ratio = torch.exp(logp - logp_old.detach())
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = -torch.minimum(ratio * advantages, clipped * advantages)
    raw_w = torch.exp(logp_old.detach() - logp_rollout)
    if importance_sampling == "truncated":
        pg = pg * torch.clamp(raw_w, max=is_cap)
    elif importance_sampling != "none":
        raise ValueError(f"unknown importance_sampling {importance_sampling!r} "
                         f"(allowed: truncated, none)")
    loss = pg
    stats = {"clipped": ((ratio - clipped).abs() > 0).float().detach(),
             "is_weight": raw_w.detach(), "is_truncated": (raw_w > is_cap).float().detach(),
             "mismatch_kl": k3_kl(logp_rollout, logp_old.detach()).detach()}
    if logp_ref is not None:
        kl = k3_kl(logp_ref.detach(), logp)
        loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    return loss, stats
