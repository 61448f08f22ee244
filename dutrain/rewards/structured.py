"""Structured rewards (docs/design.md §6): `format`, `type`, `key`, `value`, their weighted `total`.

Every component is a small pure function ``f(answer, reference) -> float in [0, 1]`` where
`answer` is the completion text (or an :class:`Answer` already read from it) and `reference` the
true annotation (a dict or its JSON text). Components never raise on the completion.

Reading is lenient on purpose: `format` demands the full contract (both tags, valid answer), while
`type`, `key` and `value` grade whatever answer object can be read, so an answer with one value off
the grid still earns credit for its types and other values (a smoother RL signal). A completion
with no readable answer object (missing tags, bad JSON, not an object) is *malformed* and scores 0
on every component.

Conventions: an empty chain is the pseudo-type ``clean``; a clean image answered clean scores 1 on
every component; any type-set mismatch scores `type` < 1; `key` and `value` are taken over the
matched types only, so they are 0 when no type matches (and 1 when both chains are clean).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from dutrain.schema import CLEAN, TAXONOMY, canonicalize, parse_answer
from dutrain.schema.answer import ANSWER_CLOSE, ANSWER_OPEN, MAX_ANSWER_CHARS

COMPONENTS = ("format", "type", "key", "value")
#: default weights of `total` (they sum to 1, so `total` stays in [0, 1])
DEFAULT_WEIGHTS: dict[str, float] = {"format": 0.1, "type": 0.4, "key": 0.1, "value": 0.4}


@dataclass(frozen=True)
class Answer:
    """What a completion says, read leniently.

    `valid`: the text meets the format contract (``parse_answer(text).ok``). `entries`: type →
    {key: value} of every known type in the answer object (first occurrence wins; unknown types
    dropped; non-numeric values dropped but their keys kept in `bad_keys`), or None when no answer
    object can be read (malformed).
    """

    valid: bool
    entries: dict[str, dict[str, float]] | None
    bad_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def readable(self) -> bool:
        return self.entries is not None

    @property
    def types(self) -> frozenset[str]:
        """Predicted type set; an empty chain is ``{"clean"}``; empty when malformed."""
        if self.entries is None:
            return frozenset()
        return frozenset(self.entries) or frozenset({CLEAN})


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _answer_object(text: str) -> Any:
    i = text.find(ANSWER_OPEN)
    j = text.find(ANSWER_CLOSE, i + len(ANSWER_OPEN)) if i >= 0 else -1
    if j < 0:
        return None
    body = text[i + len(ANSWER_OPEN):j].strip()
    if len(body) > MAX_ANSWER_CHARS:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def read_answer(text: Any, grid_factor: int = 1) -> Answer:
    """Read a completion; never raises. `grid_factor`: the grid `valid` checks values against
    (a model trained on a coarser grid, `dutrain.schema.taxonomy_at`).

    >>> a = read_answer('<think>dark</think><answer>{"degradations": [{"type": "low_light", '
    ...                 '"params": {"exposure": 0.33, "gamma": 2.0}}]}</answer>')
    >>> a.valid, sorted(a.types), a.entries["low_light"]["exposure"]
    (False, ['low_light'], 0.33)
    """
    try:
        valid = parse_answer(text, grid_factor).ok
        obj = _answer_object(text) if isinstance(text, str) else None
        items = obj.get("degradations") if isinstance(obj, dict) else None
        if not isinstance(items, list):
            return Answer(False, None)
        entries: dict[str, dict[str, float]] = {}
        bad: dict[str, tuple[str, ...]] = {}
        for item in items:
            t = item.get("type") if isinstance(item, dict) else None
            if not isinstance(t, str) or t not in TAXONOMY or t in entries:
                continue
            params = item.get("params")
            params = params if isinstance(params, dict) else {}
            nums = {str(k): _number(v) for k, v in params.items()}
            entries[t] = {k: v for k, v in nums.items() if v is not None}
            bad[t] = tuple(k for k, v in nums.items() if v is None)
        return Answer(valid, entries, bad)
    except Exception:  # the contract: any completion, no exception
        return Answer(False, None)


def _as_answer(answer: str | Answer) -> Answer:
    return answer if isinstance(answer, Answer) else read_answer(answer)


def reference_entries(reference: Mapping[str, Any] | str) -> dict[str, dict[str, float]]:
    """type → {key: value} of a true annotation (dict or JSON text); raises if it is invalid."""
    if isinstance(reference, str):
        reference = json.loads(reference)
    ann = canonicalize(reference)
    return {d["type"]: {k: float(v) for k, v in d["params"].items()} for d in ann["degradations"]}


def _types(entries: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(entries) or frozenset({CLEAN})


@dataclass(frozen=True)
class KeyMatch:
    """One true key of a matched type: the predicted value (None if missing or not a number)."""

    type: str
    key: str
    true: float
    pred: float | None

    @property
    def error(self) -> float | None:
        """|v̂ - v| / width, capped at 1 (angle-aware); None when the key was not answered."""
        if self.pred is None:
            return None
        p = TAXONOMY[self.type].param(self.key)
        return min(1.0, p.distance(self.pred, self.true) / p.width)


def key_matches(answer: str | Answer,
                reference: Mapping[str, Any] | str) -> tuple[list[KeyMatch], int]:
    """(true keys of the matched types with their predicted values, number of extra keys answered).

    Extra keys are keys a matched type does not have, or that carry a non-number.
    """
    ans = _as_answer(answer)
    ref = reference_entries(reference)
    if ans.entries is None:
        return [], 0
    out: list[KeyMatch] = []
    extra = 0
    for t in TAXONOMY:  # stage order: reproducible
        if t not in ref or t not in ans.entries:
            continue
        pred = ans.entries[t]
        out += [KeyMatch(t, k, v, pred.get(k)) for k, v in ref[t].items()]
        extra += sum(1 for k in pred if k not in ref[t]) + len(ans.bad_keys.get(t, ()))
    return out, extra


# ----------------------------------------------------------------------------------- components

def format_reward(answer: str | Answer, reference: Mapping[str, Any] | str | None = None) -> float:
    """1 when both tags are present and the answer parses and validates, else 0.

    >>> format_reward('<think>flat, sharp</think>\\n<answer>{"degradations": []}</answer>')
    1.0
    >>> format_reward('<answer>{"degradations": [{"type": "jpeg", '
    ...               '"params": {"quality": 35.5}}]}</answer>')
    0.0
    """
    return 1.0 if _as_answer(answer).valid else 0.0


def type_reward(answer: str | Answer, reference: Mapping[str, Any] | str) -> float:
    """F1 of the predicted vs. the true type set (``clean`` for an empty chain); 0 if malformed.

    >>> ref = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.7}},
    ...                         {"type": "jpeg", "params": {"quality": 35}}]}
    >>> type_reward('<think></think><answer>{"degradations": [{"type": "jpeg", '
    ...             '"params": {"quality": 40}}]}</answer>', ref)
    0.6666666666666666
    """
    ans = _as_answer(answer)
    if ans.entries is None:
        return 0.0
    pred, true = ans.types, _types(reference_entries(reference))
    hit = len(pred & true)
    return 2.0 * hit / (len(pred) + len(true))


def key_reward(answer: str | Answer, reference: Mapping[str, Any] | str) -> float:
    """Over matched types: true keys answered with a number / (true keys + extra keys answered).

    >>> ref = {"degradations": [{"type": "haze", "params": {"beta": 1.2, "airlight": 0.8}}]}
    >>> key_reward('<think></think><answer>{"degradations": [{"type": "haze", '
    ...            '"params": {"beta": 1.0}}]}</answer>', ref)
    0.5
    """
    ans = _as_answer(answer)
    matches, extra = key_matches(ans, reference)
    if not matches:
        return _both_clean(ans, reference)
    right = sum(1 for m in matches if m.pred is not None)
    return right / (len(matches) + extra)


def value_reward(answer: str | Answer, reference: Mapping[str, Any] | str) -> float:
    """Over matched keys, mean of 1 - min(1, |v̂ - v| / width), width = the key's train range.

    >>> ref = {"degradations": [{"type": "gaussian_noise", "params": {"sigma": 20}}]}
    >>> value_reward('<think></think><answer>{"degradations": [{"type": "gaussian_noise", '
    ...              '"params": {"sigma": 32}}]}</answer>', ref)
    0.75
    """
    ans = _as_answer(answer)
    matches, _ = key_matches(ans, reference)
    errors = [m.error for m in matches if m.pred is not None]
    if not errors:
        return _both_clean(ans, reference) if not matches else 0.0
    return 1.0 - sum(errors) / len(errors)


def _both_clean(ans: Answer, reference: Mapping[str, Any] | str) -> float:
    return 1.0 if ans.entries == {} and not reference_entries(reference) else 0.0


REWARD_FUNCTIONS = {"format": format_reward, "type": type_reward, "key": key_reward,
                    "value": value_reward}


def check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Weights for `total`: the defaults, or the given ones (missing components weigh 0)."""
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    unknown = [k for k in weights if k not in COMPONENTS]
    if unknown:
        raise ValueError(f"reward weights: unknown component(s) {unknown}; allowed: "
                         f"{', '.join(COMPONENTS)}")
    out = {}
    for c in COMPONENTS:
        w = weights.get(c, 0.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"reward weights: '{c}' must be a finite number >= 0, got {w!r}")
        out[c] = float(w)
    return out


def score(completion: str, reference: Mapping[str, Any] | str,
          weights: Mapping[str, float] | None = None, grid_factor: int = 1) -> dict[str, float]:
    """All components and ``total`` = Σ weight · component (weights default `DEFAULT_WEIGHTS`).
    `grid_factor`: the answer grid of the model (only `format` depends on it; values are graded
    against the true value, so a coarser grid's rounding costs `value` what it costs).

    Never raises on the completion; raises ValueError on an invalid reference or bad weights.

    >>> ref = {"degradations": [{"type": "jpeg", "params": {"quality": 35}}]}
    >>> score('<think>8x8 blocks</think>\\n<answer>{"degradations": [{"type": "jpeg", '
    ...       '"params": {"quality": 35}}]}</answer>', ref)
    {'format': 1.0, 'type': 1.0, 'key': 1.0, 'value': 1.0, 'total': 1.0}
    >>> score("no tags at all", ref)
    {'format': 0.0, 'type': 0.0, 'key': 0.0, 'value': 0.0, 'total': 0.0}
    """
    w = check_weights(weights)
    ref = reference_entries(reference)
    ans = read_answer(completion, grid_factor)
    ref_ann = {"degradations": [{"type": t, "params": p} for t, p in ref.items()]}
    out = {c: REWARD_FUNCTIONS[c](ans, ref_ann) for c in COMPONENTS}
    out["total"] = sum(w[c] * out[c] for c in COMPONENTS)
    return out
