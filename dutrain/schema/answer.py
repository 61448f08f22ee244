"""The model's text format (docs/design.md §5, fixed): render and parse.

    <think>…measured cues and what they imply…</think>
    <answer>{"degradations": [...]}</answer>

`parse_answer` accepts any string, never raises, stays fast on multi-megabyte or deeply nested
input, and reports every problem it finds rather than the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .annotation import Annotation, canonical_json, check_annotation
from .taxonomy import TAXONOMY, taxonomy_at

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
#: answers longer than this are rejected before JSON parsing (a real answer is < 1 KB)
MAX_ANSWER_CHARS = 16_384
#: reasoning is kept only up to this length in the parse result
MAX_REASONING_CHARS = 65_536


@dataclass
class ParseResult:
    annotation: Annotation | None
    errors: list[str] = field(default_factory=list)
    reasoning: str | None = None
    #: best-effort type names read from the answer even when it does not validate
    types: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the text is fully well-formed: both tags and a valid answer."""
        return self.annotation is not None and not self.errors


def render_answer(annotation: Any, reasoning: str) -> str:
    """The target text for one sample: reasoning in <think>, canonical JSON in <answer>."""
    reasoning = str(reasoning).replace(THINK_CLOSE, "").replace(ANSWER_OPEN, "")
    return (f"{THINK_OPEN}{reasoning}{THINK_CLOSE}\n"
            f"{ANSWER_OPEN}{canonical_json(annotation)}{ANSWER_CLOSE}")


def _block(text: str, open_tag: str, close_tag: str,
           start: int = 0) -> tuple[str | None, int, list[str]]:
    """Content between the first open tag at/after `start` and the next close tag."""
    i = text.find(open_tag, start)
    if i < 0:
        return None, start, [f"missing {open_tag} tag"]
    j = text.find(close_tag, i + len(open_tag))
    if j < 0:
        return None, start, [f"missing {close_tag} tag"]
    return text[i + len(open_tag):j], j + len(close_tag), []


def parse_answer(text: Any, grid_factor: int = 1) -> ParseResult:
    """Parse a completion. Never raises; `.annotation` is the canonical dict or None.
    `grid_factor`: values must lie on the grid that many times coarser (a model trained on it)."""
    try:
        return _parse(text, grid_factor)
    except Exception as exc:  # the contract: any input, no exception
        return ParseResult(None, [f"unparseable completion ({type(exc).__name__})"])


def _parse(text: Any, grid_factor: int = 1) -> ParseResult:
    if not isinstance(text, str):
        return ParseResult(None, [f"completion must be a string, got {type(text).__name__}"])
    errors: list[str] = []
    reasoning, after_think, errs = _block(text, THINK_OPEN, THINK_CLOSE)
    errors += errs
    if reasoning is not None:
        reasoning = reasoning.strip()[:MAX_REASONING_CHARS]
    answer, end, errs = _block(text, ANSWER_OPEN, ANSWER_CLOSE, after_think)
    if answer is None and after_think:
        # an answer before the reasoning is still an answer; say the order is wrong
        answer, end, _ = _block(text, ANSWER_OPEN, ANSWER_CLOSE, 0)
        if answer is not None:
            errs = ["<answer> must come after </think>"]
    errors += errs
    if answer is None:
        return ParseResult(None, errors, reasoning)
    if text.find(ANSWER_OPEN, end) >= 0:
        errors.append("more than one <answer> block")
    answer = answer.strip()
    if len(answer) > MAX_ANSWER_CHARS:
        return ParseResult(None, errors + [f"answer too long ({len(answer)} characters, "
                                           f"max {MAX_ANSWER_CHARS})"], reasoning)
    try:
        obj = json.loads(answer)
    except RecursionError:
        return ParseResult(None, errors + ["bad JSON: nested too deeply"], reasoning)
    except ValueError as exc:
        return ParseResult(None, errors + [f"bad JSON: {exc}"], reasoning)
    types = _best_effort_types(obj)
    ann, errs = check_annotation(obj, grid_factor=grid_factor)
    errors += errs
    return ParseResult(ann, errors, reasoning, types)


def _best_effort_types(obj: Any) -> list[str]:
    out: list[str] = []
    items = obj.get("degradations") if isinstance(obj, dict) else None
    if isinstance(items, list):
        for it in items[:32]:
            t = it.get("type") if isinstance(it, dict) else None
            if isinstance(t, str) and t in TAXONOMY and t not in out:
                out.append(t)
    return out


def answer_json_schema(grid_enums: bool = True, grid_factor: int = 1) -> dict[str, Any]:
    """JSON Schema of the <answer> object (for validation and structured decoding).

    With ``grid_enums`` every value is an enum of its grid (exactly what the parser accepts at
    `grid_factor`); without it, a number between the valid bounds.
    """
    variants = []
    for spec in taxonomy_at(grid_factor).values():
        props = {}
        for p in spec.params:
            if grid_enums:
                props[p.key] = {"enum": p.grid()}
            else:
                lo, hi = p.valid
                props[p.key] = {"type": "integer" if p.integer else "number",
                                "minimum": lo, "maximum": hi}
        variants.append({
            "type": "object",
            "properties": {
                "type": {"const": spec.type},
                "params": {"type": "object", "properties": props, "required": list(spec.keys),
                           "additionalProperties": False},
            },
            "required": ["type", "params"],
            "additionalProperties": False,
        })
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "dutrain degradation answer",
        "type": "object",
        "properties": {"degradations": {"type": "array", "items": {"anyOf": variants},
                                        "maxItems": len({s.stage for s in TAXONOMY.values()})}},
        "required": ["degradations"],
        "additionalProperties": False,
    }
