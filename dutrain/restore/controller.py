"""A restoration controller that guards each inverse step (`restore.plan=controlled`).

The plain plan applies every predicted step. The controller, per predicted step:

1. **confidence**: a score for the step's type. With the classical baseline as predictor the
   score is the relative presence margin of the step's stage under the baseline's own
   calibrated rule (`classical_scores`): how far the image's evidence lies past the point where
   the baseline starts naming the stage. With a VLM (vLLM) it is the probability the model gave
   the tokens spelling the type's name in its answer (`type_confidences`, from the sampled
   tokens' log-probabilities of the same single call).
2. **threshold**: a step whose score is below its type's threshold is skipped. Thresholds are
   calibrated on a split with clean references (`calibrate_thresholds`: per type, the threshold
   that maximises the summed PSNR gain of the steps it lets through; a type whose steps never
   gain is never applied) and stored as JSON (`save_thresholds` / `load_thresholds`).
3. **check and roll back**: after an applied step the classical estimators measure the result
   (`check_step`): the step's own presence statistic must not have moved away from "absent"; a
   Gaussian denoising step needs the noise it removes visible in the pixels (estimate ≥
   `NOISE_SEEN`·sigma: JPEG blocks read as noise by the DCT estimate are not), a Poisson one
   likewise ≥ `NOISE_SEEN`·255·sqrt(mean level / peak); the noise
   estimate must not have risen by more than `NOISE_RISE` times the operator's own expected gain
   (amplified noise, ringing), the JPEG periodicity score by more than `BLOCK_RISE` (new
   blockiness) unless the step removes JPEG, and the share of clipped pixels by more than
   `CLIP_RISE` (haze exempt). A failing step is rolled
   back (its input is kept).
4. **judge** (`judge.Judge`, optional): a step the rules pass is kept only if a regressor learnt
   on train rows (every restoring step applied to each, its PSNR gain recorded) predicts a
   cautious quantile of its gain above a margin, from the same readings before and after it.

Bad input never stops a batch: an unparseable answer, an operator that fails (e.g. a PSF larger
than the image), an image too small for the check, or a non-finite result leave the image (or
that step) unrestored, with the reason in the image's record.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dutrain.degrade import to_float, to_rgb_uint8, to_uint8
from dutrain.errors import UserError
from dutrain.evaluate.quality import psnr
from dutrain.schema import TAXONOMY, TYPES

from .classical import PlanStep, State, plan
from .judge import Judge, apply_step

#: a step fails the check when the noise estimate (DN) rises by more than this factor + 1 DN
NOISE_RISE = 1.5
#: ... or the JPEG periodicity score rises by more than this (new blockiness)
BLOCK_RISE = 0.2
#: ... or the share of clipped pixels (a channel at 0 or 255) rises by more than this (haze
#: exempt: its inversion legitimately saturates the sky)
CLIP_RISE = 0.05
#: a Gaussian denoising step needs the pixel noise estimate ≥ this share of its sigma
NOISE_SEEN = 0.3
#: the estimators need at least this many pixels per side (noise bins, 8×8 blocks, edges)
MIN_CHECK_SIDE = 16
THRESHOLDS_VERSION = 1

Measure = Callable[[np.ndarray], Mapping[str, float]]


@dataclass
class StepRecord:
    type: str
    params: dict[str, Any]
    score: float | None
    threshold: float | None
    action: str  # applied | skipped | rolled_back | failed
    reason: str = ""
    alternative_to: str = ""  # an alternative tried after the step of this type failed
    judged: float | None = None  # the judge's predicted PSNR gain (dB), when a judge ran

    def to_json(self) -> dict[str, Any]:
        out = {"type": self.type, "params": self.params, "score": _num(self.score),
               "threshold": _num(self.threshold), "action": self.action, "reason": self.reason}
        if self.judged is not None:
            out["judged"] = _num(round(self.judged, 3) if math.isfinite(self.judged)
                                 else self.judged)
        if self.alternative_to:
            out["alternative_to"] = self.alternative_to
        return out


@dataclass
class Outcome:
    """The controlled restoration of one image and what happened to each step."""

    image: np.ndarray  # uint8 H×W×3
    steps: list[StepRecord] = field(default_factory=list)
    reason: str = ""  # why the whole image was left as it is (e.g. unparseable answer)
    alternatives: int = 0  # alternatives tried (each one operator run and one check)

    @property
    def touched(self) -> bool:
        return any(s.action == "applied" for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"touched": self.touched, "reason": self.reason,
                "alternatives": self.alternatives, "steps": [s.to_json() for s in self.steps]}


def _num(x: float | None) -> float | str | None:
    if x is None:
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _float(x: Any) -> float | None:
    if x is None:
        return None
    return {"inf": math.inf, "-inf": -math.inf}.get(x, x) if isinstance(x, str) else float(x)


# ------------------------------------------------------------------------------- confidence

def classical_scores(calibration: Mapping[str, Any],
                     feats: Mapping[str, float]) -> dict[str, float]:
    """type → relative presence margin of its stage under the classical baseline's calibrated
    rule, ``(sign·statistic − threshold) / max(|threshold|, 1e-6)``: > 0 where the baseline
    names the stage, on a scale comparable across stages."""
    out = {}
    for t, spec in TAXONOMY.items():
        pres = calibration["presence"][str(spec.stage)]
        th = float(pres["threshold"])
        margin = float(pres["sign"] * feats[pres["feature"]] - th)
        out[t] = margin / max(abs(th), 1e-6) if math.isfinite(th) else -math.inf
    return out


# ---------------------------------------------------------------------------------- check

def check_step(type_name: str, before: Mapping[str, float], after: Mapping[str, float],
               calibration: Mapping[str, Any], params: Mapping[str, Any] | None = None,
               amplification: float = 1.0) -> tuple[bool, str]:
    """(keep, reason) for one applied step from the estimators' reading before and after it.

    `amplification`: the factor by which the operator itself expects to scale the noise (the
    exposure and haze inversions are gains; `classical.State.sigma` tracks it); `params`: the
    step's parameters (a Gaussian denoising step needs the noise it removes to be visible)."""
    pres = calibration["presence"][str(TAXONOMY[type_name].stage)]
    feat, sign = pres["feature"], pres["sign"]
    if sign * after[feat] > sign * before[feat] + 1e-9:
        return False, (f"{feat} moved away from absent ({before[feat]:.3g} → "
                       f"{after[feat]:.3g})")
    if type_name == "gaussian_noise" and params is not None and \
            before["noise_sigma"] < NOISE_SEEN * float(params["sigma"]):
        return False, (f"the pixels show noise sigma {before['noise_sigma']:.2f} DN, not the "
                       f"{float(params['sigma']):.3g} DN the step removes")
    if type_name == "poisson_noise" and params is not None and "mean" in before:
        # photon noise at the image's mean level: sigma = 255·sqrt(mean / peak) DN
        expected = 255.0 * math.sqrt(max(before["mean"], 1e-3) / float(params["peak"]))
        if before["noise_sigma"] < NOISE_SEEN * expected:
            return False, (f"the pixels show noise sigma {before['noise_sigma']:.2f} DN, not the "
                           f"{expected:.3g} DN of photon noise at peak {params['peak']} the step "
                           f"removes")
    if type_name not in ("gaussian_noise", "poisson_noise") and after["noise_sigma"] > \
            NOISE_RISE * max(1.0, amplification) * before["noise_sigma"] + 1.0:
        return False, (f"noise rose ({before['noise_sigma']:.2f} → {after['noise_sigma']:.2f} "
                       f"DN, operator gain {amplification:.2f})")
    if type_name != "haze" and after.get("clipped", 0.0) > before.get("clipped", 0.0) + CLIP_RISE:
        return False, (f"clipping rose ({before.get('clipped', 0.0):.1%} → "
                       f"{after.get('clipped', 0.0):.1%} of pixels)")
    if type_name != "jpeg" and after["jpeg_score"] > before["jpeg_score"] + BLOCK_RISE:
        return False, (f"blockiness rose (JPEG score {before['jpeg_score']:.2f} → "
                       f"{after['jpeg_score']:.2f})")
    return True, ""


def reading(image_uint8: np.ndarray) -> dict[str, float]:
    """The classical estimators' reading of an image (`estimators.measure`) plus ``clipped``,
    the share of pixels with a channel at 0 or 255, and ``mean``, the mean level (0-1)."""
    from dutrain.evaluate.estimators import measure
    f = dict(measure(image_uint8))
    f["clipped"] = float(np.mean(((image_uint8 == 0) | (image_uint8 == 255)).any(axis=2)))
    f["mean"] = float(image_uint8.mean()) / 255.0
    return f


# ----------------------------------------------------------------------------- controller

Alternatives = Callable[[PlanStep], Sequence[PlanStep]]


def control(image_uint8: np.ndarray, annotation: Mapping[str, Any] | None,
            scores: Mapping[str, float] | None, thresholds: Mapping[str, float | None],
            calibration: Mapping[str, Any], measure: Measure,
            before: Mapping[str, float] | None = None,
            alternatives: Alternatives | None = None, budget: int = 0,
            judge: Judge | None = None, margin: float = 0.0) -> Outcome:
    """Restore one image step by step under the guard of the module doc.

    `scores`: type → confidence (None: no confidence, every step is skipped); `thresholds`:
    type → threshold (a missing or None entry: the step is applied, still checked); `before`:
    the estimators' reading of `image_uint8` when the caller already has it.

    `alternatives`: for a step the check rolled back (or whose operator failed), the steps to
    try in its place, most likely first (another type of the same stage, other values); at most
    `budget` are tried per image, each under the failed step's confidence against its own
    type's threshold, checked like any step; the first that passes is kept.

    `judge`: after the hand rules pass, a step is kept only if the judge predicts a PSNR gain
    above `margin` dB from the readings before and after it."""
    img = to_rgb_uint8(image_uint8)
    out = Outcome(img)
    if annotation is None:
        out.reason = "answer did not parse"
        return out
    try:
        steps: list[PlanStep] = plan(annotation)
    except (ValueError, KeyError, TypeError) as exc:
        out.reason = f"unusable annotation: {exc}"
        return out
    if not steps:
        return out
    if min(img.shape[:2]) < MIN_CHECK_SIDE:
        out.reason = (f"image {img.shape[1]}×{img.shape[0]} is too small for the check "
                      f"(< {MIN_CHECK_SIDE} px a side)")
        out.steps = [StepRecord(s.type, s.params, None, None, "failed", out.reason)
                     for s in steps]
        return out
    x = to_float(img)
    cur_u8 = img
    cur_feats = dict(before) if before is not None else dict(measure(img))
    st = State()
    planned = {s.type for s in steps}

    def attempt(s: PlanStep, rec: StepRecord) -> tuple[np.ndarray, np.ndarray, dict] | None:
        """Run one step and check it: (image, uint8 image, reading) to keep, or None with the
        record's action and reason set (`st.sigma` restored)."""
        saved_sigma = st.sigma
        y, why = apply_step(x, s.type, s.params, st)
        if y is None:
            st.sigma = saved_sigma
            rec.action, rec.reason = "failed", why
            return None
        y_u8 = to_uint8(y)
        after = dict(measure(y_u8))
        amp = st.sigma / saved_sigma if saved_sigma > 0 else 1.0
        ok, why = check_step(s.type, cur_feats, after, calibration, s.params, amp)
        if ok and judge is not None:
            rec.judged = judge.gain(s.type, s.params, cur_feats, after)
            if not rec.judged > margin:
                ok, why = False, (f"the judge predicts {rec.judged:+.2f} dB (needs > "
                                  f"{margin:+.2f})")
        if not ok:
            st.sigma = saved_sigma
            rec.action, rec.reason = "rolled_back", why
            return None
        rec.action = "applied"
        return y, y_u8, after

    for s in steps:
        score = None if scores is None else scores.get(s.type)
        th = thresholds.get(s.type)
        rec = StepRecord(s.type, s.params, score, th, "skipped")
        out.steps.append(rec)
        if score is None:
            rec.reason = "no confidence for this predictor"
            continue
        if th is not None and not score >= th:
            rec.reason = f"confidence {score:.3g} below threshold {th:.3g}"
            continue
        kept = attempt(s, rec)
        for alt in (alternatives(s) if kept is None and alternatives is not None else ()):
            if out.alternatives >= budget:
                break
            ath = thresholds.get(alt.type)
            if (alt.type != s.type and alt.type in planned) or \
                    (alt.type == s.type and alt.params == s.params) or \
                    (ath is not None and not score >= ath):
                continue
            out.alternatives += 1
            arec = StepRecord(alt.type, alt.params, score, ath, "skipped", alternative_to=s.type)
            out.steps.append(arec)
            kept = attempt(alt, arec)
            if kept is not None:
                break
        if kept is not None:
            x, cur_u8, cur_feats = kept
    out.image = cur_u8
    return out


# ---------------------------------------------------------------------------- calibration

def calibrate_thresholds(records: Sequence[tuple[str, float, float]],
                         types: Sequence[str] = ()) -> dict[str, float]:
    """type → threshold maximising the summed gain of the steps with score ≥ threshold.

    `records`: (type, score, PSNR gain of the step in dB). Candidates are −inf (apply all),
    every observed score and +inf (never apply); ties go to the higher threshold (fewer steps
    touched). A type whose steps never gain in total gets +inf, and so does each of `types`
    that no record shows: without evidence that its step helps, it is not applied (a missing
    entry would apply it)."""
    by_type: dict[str, list[tuple[float, float]]] = {}
    for t, s, g in records:
        if math.isfinite(s) and math.isfinite(g):
            by_type.setdefault(t, []).append((s, g))
    out = {}
    for t, rows in by_type.items():
        rows.sort(key=lambda r: -r[0])  # descending score: threshold = score of row k
        best_th, best_gain, acc = math.inf, 0.0, 0.0
        for k, (s, g) in enumerate(rows):
            acc += g
            nxt = rows[k + 1][0] if k + 1 < len(rows) else None
            if nxt is not None and nxt == s:
                continue  # the same threshold admits the tied rows too
            if acc > best_gain + 1e-9:
                best_th, best_gain = (s if nxt is not None else -math.inf), acc
        out[t] = best_th
    for t in types:
        out.setdefault(t, math.inf)
    return out


def save_thresholds(path: Path, thresholds: Mapping[str, float], counts: Mapping[str, int],
                    score: str, source: str) -> None:
    path.write_text(json.dumps({
        "version": THRESHOLDS_VERSION, "score": score, "source": source,
        "thresholds": {t: _num(v) for t, v in sorted(thresholds.items())},
        "n": dict(sorted(counts.items()))}, indent=1) + "\n")


def load_thresholds(path: str | Path, score: str) -> dict[str, float]:
    """The thresholds of a JSON file written by `save_thresholds` (UserError when unusable)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
        if obj.get("version") != THRESHOLDS_VERSION or not isinstance(obj["thresholds"], dict):
            raise ValueError("not a dutrain thresholds file")
        th = {str(t): _float(v) for t, v in obj["thresholds"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"restore.thresholds '{p}' is not usable: {exc}") from None
    if obj.get("score") != score:
        raise UserError(f"restore.thresholds '{p}' was calibrated for scores "
                        f"'{obj.get('score')}', this predictor gives '{score}'")
    bad = sorted(set(th) - set(TAXONOMY))
    if bad:
        raise UserError(f"restore.thresholds '{p}' names unknown types: {', '.join(bad)}")
    return {t: v for t, v in th.items() if v is not None}


# ---------------------------------------------------------------------------- reporting

def worse_share(gains: Sequence[float], margin: float = 0.5) -> float:
    """Share of images whose PSNR is more than `margin` dB below identity."""
    return float(np.mean([g < -margin for g in gains])) if gains else 0.0


def risk_coverage(confidence: Sequence[float], gains: Sequence[float],
                  shares: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
                  ) -> list[dict[str, float]]:
    """Touch only the most confident share c of images (the others stay as they are): mean PSNR
    gain over all images and the share worse than identity by > 0.5 dB, per c."""
    n = len(gains)
    order = np.argsort(-np.asarray(confidence, dtype=float), kind="stable")
    g = np.asarray(gains, dtype=float)[order]
    rows = []
    for c in shares:
        k = int(round(c * n))
        kept = np.concatenate([g[:k], np.zeros(n - k)])
        rows.append({"coverage": float(c), "gain": float(kept.mean()) if n else 0.0,
                     "worse": worse_share(list(kept))})
    return rows


CURVE_SHARES = tuple(round(0.05 * k, 2) for k in range(21))


def risk_coverage_curves(confidence: Sequence[float], plain: Sequence[float],
                         controlled: Sequence[float], touched: float) -> dict[str, Any]:
    """The risk–coverage curves of one run (PSNR gain over identity, averaged over all images,
    against the share of images touched; `CURVE_SHARES`):

    - ``plain_by_confidence``: the plain plan on the most confident share, the rest untouched;
    - ``controlled_by_confidence``: the controller's result on the most confident share;
    - ``plain_best_order``: the plain plan on the images where it gains most (what a perfect
      confidence would reach: the gap to it is the confidence's fault);
    - ``controller``: the controller's own operating point (share it touched, its gain)."""
    def pts(conf: Sequence[float], gains: Sequence[float]) -> list[dict[str, float]]:
        return risk_coverage(conf, gains, CURVE_SHARES)
    return {"shares": list(CURVE_SHARES), "n": len(plain),
            "plain_by_confidence": pts(confidence, plain),
            "controlled_by_confidence": pts(confidence, controlled),
            "plain_best_order": pts(plain, plain),
            "controller": {"coverage": touched,
                           "gain": float(np.mean(controlled)) if len(controlled) else 0.0,
                           "worse": worse_share(list(controlled))}}


def plot_risk_coverage(curves: Mapping[str, Any], path: Path, title: str) -> None:
    """PSNR gain against the share of images touched (`risk_coverage_curves`), as a PNG."""
    from dutrain.evaluate.report import _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label, style in (("plain_best_order", "plain, best possible order", ":"),
                              ("plain_by_confidence", "plain, most confident first", "-"),
                              ("controlled_by_confidence", "controlled, most confident first",
                               "--")):
        rows = curves[key]
        ax.plot([100 * r["coverage"] for r in rows], [r["gain"] for r in rows], style,
                marker=".", label=label)
    c = curves["controller"]
    ax.plot([100 * c["coverage"]], [c["gain"]], "r*", markersize=14,
            label=f"controller ({c['worse']:.1%} worse by > 0.5 dB)")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("share of images touched (%)")
    ax.set_ylabel("mean PSNR gain over identity (dB)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ `dutrain restore` glue

SCORE_NAME = "classical_presence_margin"
VLM_SCORE_NAME = "vlm_type_probability"

_TYPE_FIELD = re.compile(r'"type"\s*:\s*"([A-Za-z_]+)"')


def type_confidences(text: str, pieces: Sequence[str], logprobs: Sequence[float]
                     ) -> dict[str, float]:
    """type → probability the model gave the tokens that spell that type's name in its answer
    (exp of the summed log-probs of the tokens overlapping the name; the least over repeats).

    `pieces`: the decoded text of each generated token, `logprobs`: each sampled token's
    log-probability. Token-by-token decoding can differ from the text inside the free-form
    reasoning (split multi-byte characters, special tokens), so only the answer — from
    ``<answer>`` (else the whole text) to the end — must be spelled exactly by the pieces' tail;
    {} otherwise (no honest mapping)."""
    joined = "".join(pieces)
    begin = max(text.find("<answer>"), 0)
    delta = len(joined) - len(text)  # offset of the answer in the pieces' coordinates
    if len(pieces) != len(logprobs) or begin + delta < 0 or joined[begin + delta:] != text[begin:]:
        return {}
    ends = np.cumsum([len(p) for p in pieces])
    starts = ends - np.array([len(p) for p in pieces], dtype=int)
    lp = np.asarray(logprobs, dtype=float)
    out: dict[str, float] = {}
    for m in _TYPE_FIELD.finditer(text, begin):
        a, b = m.start(1) + delta, m.end(1) + delta
        sel = (starts < b) & (ends > a)
        if not sel.any() or not np.all(np.isfinite(lp[sel])):
            continue
        conf = float(np.exp(lp[sel].sum()))
        out[m.group(1)] = min(conf, out.get(m.group(1), 1.0))
    return out


@dataclass
class Controlled:
    """The controlled plan of one `dutrain restore` run."""

    calibration: dict[str, Any]  # the classical baseline's (its presence rules drive the check)
    thresholds: dict[str, float]
    source: str  # where the thresholds came from
    score_name: str = SCORE_NAME
    feats: dict[str, dict[str, float]] = field(default_factory=dict)  # item name → reading()
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # item name → type → score
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    checks: int = 0
    base: Any = None  # the fitted ClassicalBaseline: ranks the alternatives
    budget: int = 0  # restore.max_alternatives
    tried: int = 0  # alternatives tried over all images
    predict_seconds: float = 0.0  # the predictor's seconds per image read (val rows included)
    judge: Judge | None = None  # the learned check (restore.judge_rows / restore.judge)
    margin: float = 0.0  # restore.judge_margin
    judge_seconds: float = 0.0  # collecting the judge's records and fitting it

    def alternatives(self, name: str) -> Alternatives | None:
        """For a failed step of one image: the other types of its stage in the classical
        estimators' ranking, each with the estimators' values, after the same type with the
        estimators' values (a VLM's values can differ from them; the classical predictor's do
        not, and the same step is never tried twice). The predictor's one answer and reading
        are all it uses: no extra model call."""
        feats = self.feats.get(name)
        if self.base is None or feats is None or self.budget <= 0:
            return None
        base = self.base

        def alts(s: PlanStep) -> list[PlanStep]:
            stage = TAXONOMY[s.type].stage
            ranked = [s.type] + [t for t in base.type_ranking(stage, feats) if t != s.type]
            out = []
            for t in ranked:
                try:
                    out.append(PlanStep(t, base.params_for(t, feats)))
                except (KeyError, ValueError, TypeError):
                    continue  # no calibrated values for this type
            return out
        return alts

    def restore(self, name: str, image: np.ndarray, annotation: Mapping[str, Any] | None
                ) -> np.ndarray:
        import time
        t0 = time.perf_counter()
        calls = [0]

        def counted(img: np.ndarray) -> Mapping[str, float]:
            calls[0] += 1
            return reading(img)

        o = control(image, annotation, self.scores.get(name), self.thresholds, self.calibration,
                    counted, before=self.feats.get(name),
                    alternatives=self.alternatives(name), budget=self.budget,
                    judge=self.judge, margin=self.margin)
        self.seconds += time.perf_counter() - t0
        self.checks += calls[0]
        self.tried += o.alternatives
        self.outcomes[name] = o
        return o.image

    def confidence(self, name: str) -> float:
        """An image's confidence for risk–coverage: the least step score (−inf: no step)."""
        sc = self.scores.get(name)
        o = self.outcomes.get(name)
        if sc is None or o is None or not o.steps:
            return -math.inf
        return min(sc.get(s.type, -math.inf) for s in o.steps)


def _baseline(cfg: Any) -> Any:
    from dutrain.evaluate.baselines import fit_baseline
    return fit_baseline("baseline:classical", str(cfg.calibration or cfg.input),
                        cfg.calibration_samples, cfg.storage)


def _predict(cfg: Any, base: Any, images: Sequence[np.ndarray]
             ) -> tuple[list[str], list[dict[str, float]], list[dict[str, float]]]:
    """(completions, scores, readings) of `images` under `cfg.model`: the classical baseline
    (scores: presence margins) or a VLM served by vLLM in Ray actors (scores: type
    probabilities from the sampled tokens' log-probs)."""
    feats = [reading(im) for im in images]
    if cfg.model == "baseline:classical":
        texts = [base.complete_from(f) for f in feats]  # reading() ⊇ measure(): one pass
        return texts, [classical_scores(base.calibration, f) for f in feats], feats
    import io

    from PIL import Image

    from dutrain.evaluate.generate import vllm_scored_completions
    from dutrain.models import resolve_model
    from dutrain.runtime.cluster import ray_session
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    model_dir = str(resolve_model(str(cfg.model), storage=cfg.storage))
    with ray_session(cfg.ray):
        outs, _ = vllm_scored_completions(model_dir, pngs, cfg.generation)
    return ([t for t, _, _ in outs], [type_confidences(t, p, lp) for t, p, lp in outs], feats)


def _judge(cfg: Any, base: Any) -> Judge | None:
    """The judge of `restore.judge` (a judge.json), else one fitted on `restore.judge_rows` train
    rows of `calibration` (else the input dataset); None with judge_rows=0."""
    if cfg.restore.judge:
        return Judge.load(cfg.restore.judge, cfg.restore.judge_quantile)
    if cfg.restore.judge_rows <= 0:
        return None
    from dutrain.io.dataset import decode_png, read_table

    from .judge import cache_path, judge_records, records_key
    root = str(cfg.calibration or cfg.input)
    rows = read_table(root, ["train"], ["degraded", "clean", "annotation"],
                      cfg.restore.judge_rows, cfg.storage).to_pylist()
    if not rows:
        raise UserError(f"restore.plan=controlled fits its judge on the train split, and dataset "
                        f"'{root}' has no train rows (set restore.judge=PATH or "
                        f"restore.judge_rows=0)")
    source = f"{root} train ({len(rows)} rows)"
    cached = cache_path(records_key(rows, base.calibration, cfg.restore.judge_draws,
                                    cfg.restore.seed)) if cfg.restore.judge_cache else None
    if cached is not None and cached.is_file():
        try:
            judge = Judge.load(cached, cfg.restore.judge_quantile)
            judge.source = f"{source}, records reused from {cached}"
            return judge
        except UserError as exc:  # a damaged cache entry is collected again, and replaced
            print(f"restore: ignoring the judge cache entry ({exc}); collecting again",
                  file=sys.stderr)
    pairs = [(decode_png(r["degraded"]), decode_png(r["clean"]), json.loads(r["annotation"]))
             for r in rows]
    records = judge_records(pairs, base.params_for, reading, cfg.restore.judge_draws,
                            cfg.restore.seed, workers=min(os.cpu_count() or 1, 8, len(rows)),
                            progress="judge: every step on train rows")
    judge = Judge(records, source, quantile=cfg.restore.judge_quantile)
    if cached is not None:
        try:
            judge.save(cached)
        except OSError as exc:  # a read-only home is no reason to fail the restore
            print(f"restore: could not cache the judge's records at {cached} ({exc})",
                  file=sys.stderr)
    return judge


def _val_rows(cfg: Any) -> tuple[list[Any], str]:
    from dutrain.io.dataset import read_table
    root = str(cfg.calibration or cfg.input)
    rows = read_table(root, ["val"], ["degraded", "clean"], cfg.restore.calibration_limit,
                      cfg.storage).to_pylist()
    if not rows:
        raise UserError(f"restore.plan=controlled calibrates its thresholds on the val split, and "
                        f"dataset '{root}' has no val rows (set restore.thresholds=PATH)")
    return rows, root


def prepare(cfg: Any, items: Sequence[Any], out_dir: Path) -> Controlled:
    """Predict every item (filling `predicted`, `completion`) with its scores and the
    estimators' reading, and load or calibrate the thresholds (written to thresholds.json).
    A VLM is served once for the val rows and the items together."""
    import time

    from dutrain.io.dataset import decode_png
    from dutrain.schema import parse_answer

    base = _baseline(cfg)
    name = SCORE_NAME if cfg.model == "baseline:classical" else VLM_SCORE_NAME
    ctl = Controlled(base.calibration, {}, "", name, base=base,
                     budget=cfg.restore.max_alternatives, margin=cfg.restore.judge_margin)
    t0 = time.perf_counter()
    ctl.judge = _judge(cfg, base)
    ctl.judge_seconds = time.perf_counter() - t0
    if ctl.judge is not None:
        ctl.judge.save(out_dir / "judge.json")
    val: list[tuple[np.ndarray, np.ndarray]] = []
    root = ""
    if not cfg.restore.thresholds:
        rows, root = _val_rows(cfg)
        val = [(decode_png(r["degraded"]), decode_png(r["clean"])) for r in rows]
    t0 = time.perf_counter()
    texts, scores, feats = _predict(cfg, base, [d for d, _ in val]
                                    + [it.degraded for it in items])
    ctl.predict_seconds = (time.perf_counter() - t0) / max(len(texts), 1)
    for k, it in enumerate(items, len(val)):
        it.completion = texts[k]
        it.predicted = parse_answer(texts[k]).annotation
        ctl.scores[it.name], ctl.feats[it.name] = scores[k], feats[k]
    counts: dict[str, int] = {}
    if cfg.restore.thresholds:
        ctl.thresholds = load_thresholds(cfg.restore.thresholds, name)
        ctl.source = str(cfg.restore.thresholds)
    else:
        ctl.thresholds, counts = calibrate_on_val(base.calibration, val, texts[:len(val)],
                                                  scores[:len(val)], feats[:len(val)],
                                                  ctl.judge, ctl.margin)
        ctl.source = f"{root} val ({len(val)} rows)"
    save_thresholds(out_dir / "thresholds.json", ctl.thresholds, counts, name, ctl.source)
    return ctl


def calibrate_on_val(calibration: Mapping[str, Any], val: Sequence[tuple[np.ndarray, np.ndarray]],
                     texts: Sequence[str], scores: Sequence[Mapping[str, float]],
                     feats: Sequence[Mapping[str, float]], judge: Judge | None = None,
                     margin: float = 0.0) -> tuple[dict[str, float], dict[str, int]]:
    """Thresholds from val rows ((degraded, clean) with the predictor's completion, scores and
    reading): every predicted step applied alone to the degraded image under the check, its PSNR
    gain against clean recorded with its score.

    With a judge the check includes it, and only the steps it keeps are recorded: a threshold
    then cuts where the predictor's confidence separates the kept steps that gained from those
    that lost, and a type with no kept val step gets none (the judge alone decides)."""
    from dutrain.schema import parse_answer

    records: list[tuple[str, float, float]] = []
    for (deg, clean), text, sc, f in zip(val, texts, scores, feats):
        ann = parse_answer(text).annotation
        if ann is None:
            continue
        ident = psnr(clean, deg)
        for d in ann["degradations"]:  # each step alone on the degraded image, checked
            if d["type"] not in sc:
                continue
            o = control(deg, {"degradations": [d]}, sc, {}, calibration, reading, before=f,
                        judge=judge, margin=margin)
            if judge is not None and not o.touched:
                continue
            records.append((d["type"], sc[d["type"]], psnr(clean, o.image) - ident))
    counts: dict[str, int] = {}
    for t, _, _ in records:
        counts[t] = counts.get(t, 0) + 1
    return calibrate_thresholds(records, TYPES if judge is None else ()), counts


def report(split: str, items: Sequence[Any], ctl: Controlled, out_dir: Path
           ) -> tuple[dict[str, float], str]:
    """Metrics and a markdown section of the controlled plan; writes controller.jsonl."""

    with open(out_dir / "controller.jsonl", "w") as fh:
        for it in items:
            o = ctl.outcomes.get(it.name)
            if o is not None:
                fh.write(json.dumps({"image": it.name, **o.to_json()}) + "\n")
    n = max(len(items), 1)
    touched = sum(1 for o in ctl.outcomes.values() if o.touched)
    kept = sum(1 for o in ctl.outcomes.values() for s in o.steps
               if s.alternative_to and s.action == "applied")
    metrics = {"restore/controlled/seconds_per_image": ctl.seconds / n,
               "restore/controlled/estimator_calls_per_image": ctl.checks / n,
               "restore/model_calls_per_image": 1.0,
               "restore/controlled/predict_seconds_per_image": ctl.predict_seconds,
               "restore/controlled/alternatives_per_image": ctl.tried / n,
               "restore/controlled/alternatives_kept": float(kept),
               "restore/controlled/touched": touched / n}
    if ctl.judge is not None:
        metrics["restore/controlled/judge_seconds"] = ctl.judge_seconds
        metrics["restore/controlled/judge_records"] = float(len(ctl.judge.records))
    lines = ["## Controlled plan", "",
             f"thresholds ({ctl.score_name}) from {ctl.source}: "
             + (", ".join(f"{t} {v:.3g}" for t, v in sorted(ctl.thresholds.items()))
                or "none (no step the judge kept on val; the judge alone decides)"), "",
             f"touched {touched} of {len(items)} images; one predictor call per image, "
             f"{ctl.checks / n:.2f} estimator passes per image for the checks (besides the "
             f"one reading that predicts); "
             f"{ctl.predict_seconds * 1000:.0f} ms per image to predict (the reading and the "
             f"answer; a VLM: its serving session), "
             f"{ctl.seconds / n * 1000:.0f} ms per image for the controlled restoration; "
             f"{ctl.tried} alternative step(s) tried after a rollback (budget "
             f"{ctl.budget} per image), {kept} kept", ""]
    actions: dict[str, int] = {}
    for o in ctl.outcomes.values():
        for s in o.steps:
            actions[s.action] = actions.get(s.action, 0) + 1
    lines += ["steps: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())), ""]
    if ctl.judge is not None:
        # the judge runs only after the rules pass: a judged step rolled back is the judge's
        judged = sum(1 for o in ctl.outcomes.values() for s in o.steps
                     if s.action == "rolled_back" and s.judged is not None)
        lines += [f"judge: {len(ctl.judge.records)} steps from {ctl.judge.source} "
                  f"({ctl.judge_seconds:.0f} s to collect and fit), quantile "
                  f"{ctl.judge.quantile:g}, margin {ctl.margin:+g} dB; it rolled back {judged} "
                  f"step(s) the hand rules passed. Share of its training steps that gained: "
                  + ", ".join(f"{t} {v['gained']:.0%}" for t, v in ctl.judge.summary().items()),
                  ""]
    paired = [it for it in items if it.clean is not None and "identity" in it.restored]
    if paired:
        ident = {it.name: psnr(it.clean, it.restored["identity"]) for it in paired}
        for kind in ("predicted", "controlled", "oracle"):
            gains = [psnr(it.clean, it.restored[kind]) - ident[it.name] for it in paired
                     if kind in it.restored]
            if gains:
                metrics[f"{split}/worse_than_identity/{kind}"] = worse_share(gains)
        metrics[f"{split}/worse_than_identity"] = metrics.get(
            f"{split}/worse_than_identity/controlled", 0.0)
        plain = [psnr(it.clean, it.restored["predicted"]) - ident[it.name] for it in paired
                 if "predicted" in it.restored]
        if len(plain) == len(paired):
            conf = [ctl.confidence(it.name) for it in paired]
            lines += ["Risk–coverage: the plain plan applied only to the most confident share of "
                      "images (confidence = the least step score), the others left as they are; "
                      "PSNR gain over identity averaged over all images.", "",
                      "| share touched | PSNR gain dB | worse than identity by > 0.5 dB |",
                      "|---|---|---|"]
            for r in risk_coverage(conf, plain):
                lines.append(f"| {r['coverage']:.0%} | {r['gain']:+.2f} | {r['worse']:.1%} |")
            ctl_gain = [psnr(it.clean, it.restored["controlled"]) - ident[it.name]
                        for it in paired if "controlled" in it.restored]
            if ctl_gain:
                lines.append(f"| controller: {touched / n:.0%} | {np.mean(ctl_gain):+.2f} | "
                             f"{worse_share(ctl_gain):.1%} |")
            if len(ctl_gain) == len(paired):
                curves = risk_coverage_curves(conf, plain, ctl_gain, touched / n)
                (out_dir / "risk_coverage.json").write_text(json.dumps(curves, indent=1) + "\n")
                plot_risk_coverage(curves, out_dir / "risk_coverage.png",
                                   f"risk–coverage, {split} ({len(paired)} images)")
                lines += ["", "Curves: risk_coverage.png, risk_coverage.json (also the "
                              "controller's result on the most confident share, and the plain "
                              "plan in the best possible order)."]
            lines.append("")
    return metrics, "\n".join(lines)
