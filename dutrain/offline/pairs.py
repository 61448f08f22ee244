"""Preference pairs and best samples from scored completions: pure functions, no model.

A *sample* is a mapping with at least ``prompt_id`` (the image's sample_id), ``sample_index``
(0..K-1) and ``total`` (the structured reward). For each prompt every two samples whose totals
differ by at least `min_margin` (and by more than `tie_eps`: ties are dropped) give one pair,
chosen = the higher total; `max_pairs_per_prompt` keeps the widest margins first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

#: totals closer than this are a tie (rewards are sums of float weights)
TIE_EPS = 1e-9


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    chosen: int  # sample_index of the chosen sample
    rejected: int
    chosen_reward: float
    rejected_reward: float

    @property
    def margin(self) -> float:
        return self.chosen_reward - self.rejected_reward


def _by_prompt(samples: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[str(s["prompt_id"])].append(s)
    return {k: sorted(v, key=lambda s: int(s["sample_index"])) for k, v in sorted(groups.items())}


def build_pairs(samples: Iterable[Mapping[str, Any]], min_margin: float = 0.0,
                max_pairs_per_prompt: int | None = None) -> list[Pair]:
    """Every (chosen, rejected) pair within a prompt with margin >= max(min_margin, a tie).

    Deterministic: prompts in sorted order; within a prompt, widest margin first, then by
    (chosen, rejected) sample index.
    """
    if min_margin < 0:
        raise ValueError(f"min_margin must be >= 0, got {min_margin}")
    out: list[Pair] = []
    for pid, group in _by_prompt(samples).items():
        pairs = []
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                ra, rb = float(a["total"]), float(b["total"])
                if abs(ra - rb) <= TIE_EPS or abs(ra - rb) < min_margin:
                    continue
                hi, lo = (a, b) if ra > rb else (b, a)
                pairs.append(Pair(pid, int(hi["sample_index"]), int(lo["sample_index"]),
                                  float(hi["total"]), float(lo["total"])))
        pairs.sort(key=lambda p: (-p.margin, p.chosen, p.rejected))
        out += pairs[:max_pairs_per_prompt] if max_pairs_per_prompt else pairs
    return out


def best_samples(samples: Iterable[Mapping[str, Any]], min_reward: float = 0.0
                 ) -> list[Mapping[str, Any]]:
    """The highest-total sample of each prompt (lowest index on a tie), if >= `min_reward`."""
    best = []
    for group in _by_prompt(samples).values():
        top = max(group, key=lambda s: (float(s["total"]), -int(s["sample_index"])))
        if float(top["total"]) >= min_reward:
            best.append(top)
    return best


def pair_stats(pairs: list[Pair], prompts: int) -> dict[str, float]:
    """`pairs/...` metrics: pairs kept, prompts with a pair, mean margin, chosen vs rejected."""
    n = len(pairs)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    return {"pairs/kept": float(n),
            "pairs/prompts_with_pair": float(len({p.prompt_id for p in pairs})),
            "pairs/prompts": float(prompts),
            "pairs/mean_margin": mean([p.margin for p in pairs]),
            "pairs/chosen_reward": mean([p.chosen_reward for p in pairs]),
            "pairs/rejected_reward": mean([p.rejected_reward for p in pairs])}
