"""Annotations: validation, canonical form and canonical JSON (docs/design.md §4, fixed).

An annotation is a plain dict ``{"degradations": [{"type": t, "params": {k: v}}, ...]}``; this
module turns any such dict into its canonical form (stage order, taxonomy key order, values on
the grid) and writes the one canonical JSON string for it.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from .taxonomy import TAXONOMY, TYPES, DegradationSpec, taxonomy_at

Annotation = dict[str, Any]


class AnnotationError(ValueError):
    """An annotation that does not fit the taxonomy; `.errors` lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("; ".join(errors))


@dataclass(frozen=True)
class Degradation:
    type: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "params": dict(self.params)}


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_annotation(obj: Any, snap: bool = False,
                     grid_factor: int = 1) -> tuple[Annotation | None, list[str]]:
    """Validate `obj` against the taxonomy; return (canonical annotation or None, errors).

    Every problem is reported (unknown type or key, missing key, duplicate type, two types of one
    stage, value not a number, off range, off grid). With ``snap=True`` off-grid values are
    snapped instead of reported (used by samplers, never by the answer parser). `grid_factor`:
    the grid is that many times coarser (`taxonomy_at`; 1 is the contract's grid).
    """
    tax = taxonomy_at(grid_factor)
    errors: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"annotation must be a JSON object, got {type(obj).__name__}"]
    extra = [k for k in obj if k != "degradations"]
    for k in extra:
        errors.append(f"unknown top-level key {k!r}; only 'degradations' is allowed")
    if "degradations" not in obj:
        return None, errors + ["missing key 'degradations'"]
    items = obj["degradations"]
    if not isinstance(items, list):
        return None, errors + [f"'degradations' must be a list, got {type(items).__name__}"]
    seen_types: set[str] = set()
    seen_stages: dict[int, str] = {}
    out: list[tuple[DegradationSpec, dict[str, Any]]] = []
    for i, item in enumerate(items):
        where = f"degradations[{i}]"
        if not isinstance(item, dict):
            errors.append(f"{where} must be an object, got {type(item).__name__}")
            continue
        for k in item:
            if k not in ("type", "params"):
                errors.append(f"{where}: unknown field {k!r}; allowed: 'type', 'params'")
        t = item.get("type")
        if not isinstance(t, str):
            errors.append(f"{where}: missing or non-string 'type'")
            continue
        if t not in tax:
            errors.append(f"{where}: unknown type {t!r}{_suggest(t, TYPES)}")
            continue
        spec = tax[t]
        if t in seen_types:
            errors.append(f"{where}: duplicate type {t!r}")
            continue
        if spec.stage in seen_stages:
            errors.append(f"{where}: {t!r} and {seen_stages[spec.stage]!r} share stage "
                          f"{spec.stage} ({spec.stage_name}); a chain holds one per stage")
            continue
        seen_types.add(t)
        seen_stages[spec.stage] = t
        params = item.get("params", None)
        if not isinstance(params, dict):
            errors.append(f"{where} ({t}): 'params' must be an object")
            continue
        clean: dict[str, Any] = {}
        for k in params:
            if k not in spec.keys:
                errors.append(f"{where} ({t}): unknown key {k!r}{_suggest(k, spec.keys)}; "
                              f"allowed: {', '.join(spec.keys)}")
        for p in spec.params:
            if p.key not in params:
                errors.append(f"{where} ({t}): missing key {p.key!r}")
                continue
            v = params[p.key]
            if not _is_number(v):
                errors.append(f"{where} ({t}.{p.key}): value {v!r} is not a number")
                continue
            if not p.in_range(v):
                lo, hi = p.valid
                errors.append(f"{where} ({t}.{p.key}): value {v} off range [{p.format(lo)}, "
                              f"{p.format(hi)}]")
                continue
            if not p.on_grid(v):
                if snap:
                    v = p.snap(v)
                else:
                    errors.append(f"{where} ({t}.{p.key}): value {v} off grid (step "
                                  f"{p.format(p.step)}); nearest {p.format(p.snap(v))}")
                    continue
            clean[p.key] = p._fmt(float(v))
        out.append((spec, clean))
    if errors:
        return None, errors
    out.sort(key=lambda sc: sc[0].stage)
    return {"degradations": [{"type": s.type, "params": c} for s, c in out]}, []


def canonicalize(annotation: Any, snap: bool = False, grid_factor: int = 1) -> Annotation:
    """The canonical dict for `annotation`; raises AnnotationError listing every problem."""
    ann, errors = check_annotation(annotation, snap=snap, grid_factor=grid_factor)
    if ann is None:
        raise AnnotationError(errors)
    return ann


def snap_annotation(annotation: Any, grid_factor: int) -> Annotation:
    """`annotation` with every value moved to the nearest point of the grid `grid_factor` times
    coarser: what a model answering on that grid should say (SFT targets). Still canonical at
    factor 1 (a coarse grid is a subset of the contract's)."""
    return canonicalize(canonicalize(annotation), snap=True, grid_factor=grid_factor)


def canonical_json(annotation: Any) -> str:
    """The one canonical JSON text of an annotation (docs/design.md §4).

    >>> canonical_json({"degradations": [{"type": "jpeg", "params": {"quality": 35}},
    ...                                  {"type": "gaussian_blur", "params": {"sigma": 1.7}}]})
    '{"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.7}}, {"type": "jpeg", "params": {"quality": 35}}]}'
    """  # noqa: E501 - a doctest's expected output is one line
    ann = canonicalize(annotation)
    entries = []
    for d in ann["degradations"]:
        spec = TAXONOMY[d["type"]]
        params = ", ".join(f"{json.dumps(p.key)}: {p.format(d['params'][p.key])}"
                           for p in spec.params)
        entries.append(f'{{"type": {json.dumps(d["type"])}, "params": {{{params}}}}}')
    return '{"degradations": [' + ", ".join(entries) + "]}"


def types_of(annotation: Annotation) -> list[str]:
    return [d["type"] for d in annotation["degradations"]]


def is_clean(annotation: Annotation) -> bool:
    return not annotation["degradations"]


def clean_annotation() -> Annotation:
    return {"degradations": []}
