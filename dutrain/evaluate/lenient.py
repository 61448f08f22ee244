"""A lenient reading of generalist answers: the predicted type set even when the format is off
(no tags, a ```json fence, bare JSON) or values are missing.

Reported under ``{split}/lenient/*`` only, never mixed into the strict metrics (format validity,
type_exact, rewards), which read the answer exactly as docs/design.md §5 defines it.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from dutrain.rewards import read_answer
from dutrain.schema import CLEAN
from dutrain.schema.answer import ANSWER_CLOSE, ANSWER_OPEN, MAX_ANSWER_CHARS

from .metrics import Scored


def _json_objects(text: str) -> Iterable[Any]:
    """Every JSON object that starts at a '{' of `text` (first ones first)."""
    dec = json.JSONDecoder()
    i = text.find("{")
    while 0 <= i < len(text):
        try:
            obj, _ = dec.raw_decode(text, i)
            yield obj
        except (ValueError, RecursionError):
            pass
        i = text.find("{", i + 1)


def lenient_types(text: str | None) -> frozenset[str] | None:
    """The type set a generalist meant (``{"clean"}`` for an empty list), None if unreadable."""
    if not isinstance(text, str) or len(text) > 4 * MAX_ANSWER_CHARS:
        return None
    strict = read_answer(text)
    if strict.readable:
        return strict.types
    for obj in _json_objects(text):
        if isinstance(obj, dict) and isinstance(obj.get("degradations"), list):
            wrapped = f"{ANSWER_OPEN}{json.dumps(obj)}{ANSWER_CLOSE}"
            ans = read_answer(wrapped)
            if ans.readable:
                return ans.types
    return None


def lenient_metrics(split: str, scored: list[Scored],
                    completions: dict[str, str | None]) -> dict[str, float]:
    """``{split}/lenient/readable``: share of answers a type set could be read from;
    ``{split}/lenient/type_accuracy``: share whose read type set equals the true one."""
    if not scored:
        return {}
    read = [lenient_types(completions.get(s.sample_id)) for s in scored]
    n = len(scored)
    hits = sum(t is not None and t == (frozenset(s.reference) or frozenset({CLEAN}))
               for t, s in zip(read, scored))
    return {f"{split}/lenient/readable": sum(t is not None for t in read) / n,
            f"{split}/lenient/type_accuracy": hits / n}
