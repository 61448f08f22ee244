"""Structured rewards (docs/design.md §6): small pure functions, shared by RL and evaluation.

    from dutrain.rewards import score
    score(completion, reference_annotation)  # {'format', 'type', 'key', 'value', 'total'}
"""

from .structured import (
    COMPONENTS,
    DEFAULT_WEIGHTS,
    REWARD_FUNCTIONS,
    Answer,
    KeyMatch,
    check_weights,
    format_reward,
    key_matches,
    key_reward,
    read_answer,
    reference_entries,
    score,
    type_reward,
    value_reward,
)

__all__ = ["COMPONENTS", "DEFAULT_WEIGHTS", "REWARD_FUNCTIONS", "Answer", "KeyMatch",
           "check_weights", "format_reward", "key_matches", "key_reward", "read_answer",
           "reference_entries", "score", "type_reward", "value_reward"]
