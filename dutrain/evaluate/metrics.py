"""Evaluation metrics of docs/design.md §6/§8, computed with the reward scorer (one scorer for
both).

Per split (keys ``{split}/{metric}``):
- ``format_valid``: share of samples whose completion meets the format contract;
- ``type_exact``: share whose predicted type set equals the true one (``clean`` for an empty chain);
- ``type_f1``: micro F1 over (sample, type) labels incl. ``clean``; ``type_f1/{type}`` per type;
- ``type_recall/{type}``: share of the samples that hold a type whose prediction names it (per-type
  accuracy: with one degradation per sample it is the type's row of the confusion matrix);
- ``type_recall_{mild,medium,strong}/{type}``: that recall within the thirds of the type's train
  range of its strength parameter (`DegradationSpec.severity`; OOD values fall in the outer
  thirds): says whether misses are degradations too faint to see or ones a model should catch;
  ``type_recall_{mild,medium,strong}`` pools the degraded samples of every type;
- ``type_exact_visible`` / ``type_exact_faint``: ``type_exact`` over the degraded samples whose
  degradation a viewer can see (PSNR of the degraded image against its clean one below
  `VISIBLE_PSNR` dB) / cannot; ``visible_share``: the visible share of the degraded samples
  (only when the samples carry that PSNR: `Scored.psnr`);
- ``key_acc``: mean of the `key` reward;
- ``value_nmae``: mean over matched, answered keys of min(1, |v̂ - v| / width) (= 1 - `value`
  per key), and ``value_nmae/{type}.{key}`` per key;
- ``value_within_1_step``: share of matched, answered keys within one grid step of the truth
  (the answer grid's step: coarser for a model trained at a grid factor > 1);
- ``value_nmae_grid``: over the same keys, the error of an answer exactly right up to the answer
  grid (the true value snapped to it): the floor the grid puts under ``value_nmae``, 0 at grid
  factor 1 where the truth lies on the grid (docs/design.md §3, "Grid factor");
- additive: ``n`` (samples), ``missing`` (samples with no prediction: scored as format
  failures) and ``reward/{component}`` (mean scores, as RL logs them).
A metric with no support (e.g. no matched key) is left out rather than reported as 0 or 1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from dutrain.rewards import (
    COMPONENTS,
    Answer,
    KeyMatch,
    check_weights,
    key_matches,
    read_answer,
    reference_entries,
)
from dutrain.rewards.structured import REWARD_FUNCTIONS
from dutrain.schema import CLEAN, TAXONOMY, TYPES, taxonomy_at

#: confusion-matrix column for a true type the answer neither named nor replaced
MISSED = "missed"
#: confusion-matrix row for a predicted type that pairs with no true type
EXTRA = "extra"
#: thirds of a type's strength range, mildest first
STRENGTH_BANDS = ("mild", "medium", "strong")
#: a degradation is visible when its image is below this PSNR (dB) against the clean one
VISIBLE_PSNR = 35.0


def strength_band(type_name: str, params: Mapping[str, float]) -> str:
    return STRENGTH_BANDS[min(2, int(TAXONOMY[type_name].severity(params) * 3))]


@dataclass
class Scored:
    """One evaluated sample."""

    sample_id: str
    split: str
    reference: dict[str, dict[str, float]]
    answer: Answer
    scores: dict[str, float]
    matches: list[KeyMatch] = field(default_factory=list)
    missing: bool = False
    #: the answer grid the completion was read on (`dutrain.schema.taxonomy_at`)
    grid_factor: int = 1
    #: PSNR (dB) of the degraded image against its clean one, where known
    psnr: float | None = None

    @property
    def true_types(self) -> frozenset[str]:
        return frozenset(self.reference) or frozenset({CLEAN})


def score_sample(sample_id: str, split: str, completion: str | None,
                 reference: Mapping[str, Any] | str,
                 weights: Mapping[str, float] | None = None, grid_factor: int = 1,
                 psnr: float | None = None) -> Scored:
    """Score one completion (None = no prediction: a format failure); `grid_factor`: the
    model's answer grid; `psnr`: the degraded image's against its clean one."""
    ref = reference_entries(reference)
    ref_ann = {"degradations": [{"type": t, "params": p} for t, p in ref.items()]}
    ans = read_answer(completion if completion is not None else "", grid_factor)
    scores = {c: REWARD_FUNCTIONS[c](ans, ref_ann) for c in COMPONENTS}
    w = check_weights(weights)
    scores["total"] = sum(w[c] * scores[c] for c in COMPONENTS)
    matches, _ = key_matches(ans, ref_ann)
    return Scored(sample_id, split, ref, ans, scores, matches, missing=completion is None,
                  grid_factor=grid_factor, psnr=psnr)


def _f1(tp: int, fp: int, fn: int) -> float | None:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else None


def split_metrics(split: str, scored: Iterable[Scored]) -> dict[str, float]:
    """The flat metrics of one split (see module doc)."""
    rows = list(scored)
    if not rows:
        return {}
    n = len(rows)
    out: dict[str, float] = {"n": n, "missing": sum(r.missing for r in rows)}
    out["format_valid"] = sum(r.scores["format"] for r in rows) / n
    out["type_exact"] = sum(r.answer.types == r.true_types for r in rows) / n
    tp, fp, fn = Counter(), Counter(), Counter()
    banded: dict[str, list[bool]] = defaultdict(list)  # "{band}/{type}" -> hit per sample
    for r in rows:
        pred, true = r.answer.types, r.true_types
        for t in pred & true:
            tp[t] += 1
        for t in pred - true:
            fp[t] += 1
        for t in true - pred:
            fn[t] += 1
        for t, params in r.reference.items():
            banded[f"{strength_band(t, params)}/{t}"].append(t in pred)
    out["type_f1"] = _f1(sum(tp.values()), sum(fp.values()), sum(fn.values())) or 0.0
    for t in (CLEAN, *TYPES):
        f1 = _f1(tp[t], fp[t], fn[t])
        if f1 is not None:
            out[f"type_f1/{t}"] = f1
        if tp[t] + fn[t]:
            out[f"type_recall/{t}"] = tp[t] / (tp[t] + fn[t])
    for band in STRENGTH_BANDS:
        pooled = [h for t in TYPES for h in banded.get(f"{band}/{t}", [])]
        if pooled:
            out[f"type_recall_{band}"] = sum(pooled) / len(pooled)
        for t in TYPES:
            if hits := banded.get(f"{band}/{t}"):
                out[f"type_recall_{band}/{t}"] = sum(hits) / len(hits)
    degraded = [r for r in rows if r.psnr is not None and r.true_types != {CLEAN}]
    if degraded:
        visible = [r.psnr < VISIBLE_PSNR for r in degraded]
        out["visible_share"] = sum(visible) / len(degraded)
        for name, want in (("visible", True), ("faint", False)):
            group = [r for r, v in zip(degraded, visible) if v == want]
            if group:
                out[f"type_exact_{name}"] = sum(r.answer.types == r.true_types
                                                for r in group) / len(group)
    out["key_acc"] = sum(r.scores["key"] for r in rows) / n
    errs: dict[str, list[float]] = defaultdict(list)
    within: list[bool] = []
    floor: list[float] = []  # the answer grid's own error on the same keys
    for r in rows:
        for m in r.matches:
            if m.pred is None:
                continue
            errs[f"{m.type}.{m.key}"].append(m.error)
            p = taxonomy_at(r.grid_factor)[m.type].param(m.key)
            within.append(p.distance(m.pred, m.true) <= p.step_at(m.true) + 1e-6)
            floor.append(min(1.0, p.distance(p.snap(m.true), m.true) / p.width))
    all_errs = [e for v in errs.values() for e in v]
    if all_errs:
        out["value_nmae"] = sum(all_errs) / len(all_errs)
        out["value_nmae_grid"] = sum(floor) / len(floor)
        out["value_within_1_step"] = sum(within) / len(within)
        for k in sorted(errs, key=_key_order):
            out[f"value_nmae/{k}"] = sum(errs[k]) / len(errs[k])
    for c in (*COMPONENTS, "total"):
        out[f"reward/{c}"] = sum(r.scores[c] for r in rows) / n
    return {f"{split}/{k}": float(v) for k, v in out.items()}


def source_of(sample_id: str) -> str:
    """The source image of a sample id (``{source_id}:{crop}:{variant}``, dutrain.data.plan)."""
    return sample_id.rsplit(":", 2)[0]


def by_source(scored: Iterable[Scored]) -> dict[str, dict[str, float]]:
    """source_id -> {n, type_exact, value_nmae (when supported)}: which images are hard (a
    source that looks degraded when clean, e.g. a microscopy image, shows up here)."""
    groups: dict[str, list[Scored]] = defaultdict(list)
    for r in scored:
        groups[source_of(r.sample_id)].append(r)
    out = {}
    for src, rows in sorted(groups.items()):
        m = split_metrics("s", rows)
        out[src] = {k: m[f"s/{k}"] for k in ("n", "type_exact", "value_nmae") if f"s/{k}" in m}
    return out


def _key_order(type_key: str) -> int:
    t, k = type_key.split(".", 1)
    order = [f"{s.type}.{p.key}" for s in TAXONOMY.values() for p in s.params]
    return order.index(f"{t}.{k}")


def confusion_labels() -> tuple[list[str], list[str]]:
    """(row labels: true, column labels: predicted) of the type confusion matrix."""
    return [CLEAN, *TYPES, EXTRA], [CLEAN, *TYPES, MISSED]


def confusion(scored: Iterable[Scored]) -> list[list[int]]:
    """Counts of (true type, predicted type), rows/columns as `confusion_labels()`.

    A true type that was predicted counts on the diagonal. A true type that was not: paired with
    each unmatched predicted type of the same stage (a confusion within the stage, e.g. gaussian
    vs. defocus blur); else, when it is the only true type left unpaired, with the predicted
    types left unpaired whatever their stage (with one degradation per image, "downsample read
    as low light" is the cell downsample → low_light, not a `missed` and an `extra`); else with
    ``clean`` when the answer said clean, else ``missed`` (also when the answer was malformed).
    A predicted type left unpaired counts in row ``extra``; a clean image answered with
    degradations counts each of them in row ``clean``.
    """
    rows, cols = confusion_labels()
    ri, ci = {r: i for i, r in enumerate(rows)}, {c: i for i, c in enumerate(cols)}
    m = [[0] * len(cols) for _ in rows]
    for s in scored:
        pred, true = s.answer.types, s.true_types
        unmatched_pred = set(pred - true)
        if true == {CLEAN}:
            if CLEAN in pred:
                m[ri[CLEAN]][ci[CLEAN]] += 1
            elif not pred:
                m[ri[CLEAN]][ci[MISSED]] += 1
            for p in sorted(unmatched_pred - {CLEAN}):
                m[ri[CLEAN]][ci[p]] += 1
            continue
        paired: set[str] = set()
        lone: list[str] = []  # true types neither predicted nor confused within their stage
        for t in sorted(true, key=lambda x: TAXONOMY[x].stage):
            if t in pred:
                m[ri[t]][ci[t]] += 1
                continue
            same_stage = [p for p in unmatched_pred
                          if p != CLEAN and TAXONOMY[p].stage == TAXONOMY[t].stage]
            for p in same_stage:
                m[ri[t]][ci[p]] += 1
                paired.add(p)
            if not same_stage:
                lone.append(t)
        left = sorted(unmatched_pred - paired - {CLEAN})
        for t in lone:
            if len(lone) == 1 and left:  # one true type, read as another stage's type(s)
                for p in left:
                    m[ri[t]][ci[p]] += 1
                paired.update(left)
            elif pred == {CLEAN}:
                m[ri[t]][ci[CLEAN]] += 1
            else:
                m[ri[t]][ci[MISSED]] += 1
        for p in sorted(unmatched_pred - paired - {CLEAN}):
            m[ri[EXTRA]][ci[p]] += 1
    return m
