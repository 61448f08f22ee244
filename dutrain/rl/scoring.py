"""Rewards of one RL completion: the structured scorer of docs/design.md §6, or a toy reward.

Both return a dict with a `total` the advantages are computed from; the structured one adds the
`format`/`type`/`key`/`value` components (logged as `reward/{component}`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from dutrain.rewards import score
from dutrain.schema import parse_answer

RewardFn = Callable[[str, Mapping[str, Any]], dict[str, float]]


def type_mention_reward(completion: str, target_type: str) -> dict[str, float]:
    """Toy reward: 1 when the completion names `target_type` anywhere, else 0.

    Dense enough that even an untrained model finds it by chance, so a few GRPO steps visibly
    move the policy (used by tests and smoke runs, not for real training).

    >>> type_mention_reward('<answer>{"degradations": [{"type": "haze"}]}</answer>', "haze")
    {'total': 1.0}
    """
    return {"total": 1.0 if target_type in completion else 0.0}


def reward_function(kind: str, weights: Mapping[str, float] | None = None,
                    target_type: str = "haze", grid_factor: int = 1) -> RewardFn:
    """The reward of config `reward.kind`: completion, reference annotation → components.
    `grid_factor`: the answer grid of the policy (its model directory's)."""
    if kind == "structured":
        w = dict(weights) if weights is not None else None
        return lambda completion, reference: score(completion, reference, w, grid_factor)
    if kind == "type_mention":
        return lambda completion, reference: type_mention_reward(completion, target_type)
    raise ValueError(f"unknown reward kind {kind!r} (allowed: structured, type_mention)")


def format_valid(completion: str, grid_factor: int = 1) -> bool:
    """The completion meets the answer contract of docs/design.md §5 (tags, JSON, taxonomy, grid).
    """
    return bool(parse_answer(completion, grid_factor).ok)
