"""The two rows a trained model must beat: `baseline:prior` and `baseline:classical`.

- prior: always answers the training split's most likely chain: the most frequent type set, each
  key at the grid value nearest the median of that key over the training rows holding its type.
- classical: the non-learned estimators of `estimators` plus a decision rule, calibrated on
  training rows: per stage, a threshold on one presence statistic (the one maximizing that stage's
  F1 on train); within a stage holding several types, the nearest class mean of standardized
  discriminating features; per key, a least-squares line from the raw physical estimate to the
  value, fitted on the training rows where the stage is detected (identity where the estimate
  is already the physical value: JPEG quality, angles). Values
  are clamped to the valid range, snapped to the grid and written with `render_answer`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dutrain.errors import UserError
from dutrain.io.dataset import decode_png, read_table
from dutrain.schema import STAGE_NAMES, TAXONOMY, canonical_json, canonicalize, render_answer

from .estimators import measure

# ----------------------------------------------------------------------------------------- prior

def prior_annotation(annotations: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The most likely chain of a set of annotations (see module doc)."""
    anns = [canonicalize(a) for a in annotations]
    if not anns:
        raise ValueError("the prior baseline needs training annotations; the train split is empty")
    sets = Counter(tuple(d["type"] for d in a["degradations"]) for a in anns)
    best = min(sets, key=lambda s: (-sets[s], s))  # ties: first in sorted order, reproducibly
    out = []
    for t in best:
        params = {}
        for p in TAXONOMY[t].params:
            vals = [d["params"][p.key] for a in anns for d in a["degradations"] if d["type"] == t]
            params[p.key] = p.snap(float(np.median(vals)))
        out.append({"type": t, "params": params})
    return canonicalize({"degradations": out})


@dataclass
class PriorBaseline:
    annotation: dict[str, Any]
    support: float  # share of training rows with this type set

    @classmethod
    def fit(cls, annotations: Iterable[Mapping[str, Any]]) -> "PriorBaseline":
        anns = [canonicalize(a) for a in annotations]
        ann = prior_annotation(anns)
        types = [d["type"] for d in ann["degradations"]]
        share = sum(1 for a in anns if [d["type"] for d in a["degradations"]] == types) / len(anns)
        return cls(ann, share)

    def complete(self, images: Sequence[Any]) -> list[str]:
        text = render_answer(self.annotation, f"Prior: the most frequent chain of the training "
                                              f"split ({self.support:.1%} of rows); no cue used.")
        return [text] * len(images)

    def describe(self) -> dict[str, Any]:
        return {"annotation": canonical_json(self.annotation), "support": self.support}


# ------------------------------------------------------------------------------------- classical

#: stage → (presence statistic, sign): the stage is present when sign * statistic > threshold
PRESENCE: dict[int, tuple[str, float]] = {
    1: ("haze_gradient", 1.0), 2: ("streaks", 1.0), 3: ("edge_width", 1.0), 4: ("bright_p99", -1.0),
    5: ("cutoff", -1.0), 6: ("noise_sigma_jpeg", 1.0), 7: ("jpeg_score", 1.0),
}
#: stage → features that tell its types apart
DISCRIMINATE: dict[int, tuple[str, ...]] = {3: ("anisotropy", "lsf_shape", "edge_width"),
                                            6: ("noise_signal_share",)}
#: type.key → raw estimate; `None` = the training median; IDENTITY keys are not re-fitted
RAW: dict[str, str | None] = {
    "haze.beta": "haze_beta", "haze.airlight": "haze_airlight",
    "rain.density": "streaks", "rain.length": None, "rain.angle": "rain_angle",
    "gaussian_blur.sigma": "edge_width", "motion_blur.length": "edge_width",
    "motion_blur.angle": "motion_angle", "defocus_blur.radius": "edge_width",
    "low_light.exposure": "bright_p99", "low_light.gamma": "gamma_raw",
    "downsample.scale": "cutoff", "gaussian_noise.sigma": "noise_sigma_jpeg",
    "poisson_noise.peak": "noise_peak", "jpeg.quality": "jpeg_quality",
}
IDENTITY = ("jpeg.quality", "motion_blur.angle", "rain.angle")
#: keys calibrated as log(value) ≈ a·log(raw) + b (estimates spread over decades)
LOG_SCALE = ("poisson_noise.peak",)
#: type.key → a 0/1 feature splitting its calibration in two regimes (a line per regime)
REGIME: dict[str, str] = {"gaussian_noise.sigma": "jpeg_regime"}
assert set(RAW) == {f"{d.type}.{p.key}" for d in TAXONOMY.values() for p in d.params}


def best_threshold(stat: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximizing the F1 of `stat > threshold` against `positive`."""
    if not positive.any():
        return float("inf"), 0.0
    cands = np.unique(stat)
    cands = np.concatenate([[cands[0] - 1.0], (cands[:-1] + cands[1:]) / 2]) if cands.size > 1 \
        else cands - 1.0
    best = (float(cands[0]), -1.0)
    for th in cands:
        pred = stat > th
        tp = float((pred & positive).sum())
        f1 = 2 * tp / (pred.sum() + positive.sum())
        if f1 > best[1]:
            best = (float(th), f1)
    return best


def _fit_line(pairs: Sequence[tuple[Mapping[str, float], float]], feature: str | None,
              default: float | None, log: bool = False) -> dict[str, Any] | None:
    """Least-squares line value ≈ a·feature + b (both logged with `log`) over (features, true
    value) pairs; the median of the values when there is no feature or fewer than 5 pairs
    (`default`, or None, without any pair)."""
    true = np.array([v for _, v in pairs], dtype=float)
    raw = np.array([f[feature] for f, _ in pairs], dtype=float) if feature else np.empty(0)
    if feature is None or true.size < 5 or np.ptp(raw) <= 0:
        if true.size:
            return {"feature": None, "median": float(np.median(true))}
        return None if default is None else {"feature": None, "median": default}
    if log:
        raw, true = np.log(np.maximum(raw, 1e-3)), np.log(true)
    a, b = np.polyfit(raw, true, 1)
    return {"feature": feature, "a": float(a), "b": float(b), "log": log}


def _apply_line(m: Mapping[str, Any], feats: Mapping[str, float]) -> float:
    if m["feature"] is None:
        return m["median"]
    x = feats[m["feature"]]
    if m.get("log"):
        return float(np.exp(m["a"] * np.log(max(x, 1e-3)) + m["b"]))
    return m["a"] * x + m["b"]


@dataclass
class ClassicalBaseline:
    """Calibrated classical estimators; `calibration` is plain JSON (logged as an artifact)."""

    calibration: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, features: Sequence[Mapping[str, float]],
            annotations: Sequence[Mapping[str, Any]]) -> "ClassicalBaseline":
        if not features:
            raise ValueError("the classical baseline needs training rows to calibrate on; the "
                             "train split is empty")
        anns = [canonicalize(a) for a in annotations]
        types = [{d["type"]: d["params"] for d in a["degradations"]} for a in anns]
        cal: dict[str, Any] = {"n": len(anns), "presence": {}, "types": {}, "values": {}}
        for stage, (feat, sign) in PRESENCE.items():
            stat = sign * np.array([f[feat] for f in features])
            pos = np.array([any(TAXONOMY[t].stage == stage for t in ts) for ts in types])
            th, f1 = best_threshold(stat, pos)
            cal["presence"][str(stage)] = {"feature": feat, "sign": sign, "threshold": th,
                                           "train_f1": f1}
        for stage, feats in DISCRIMINATE.items():
            pres = cal["presence"][str(stage)]
            # class means over the rows where the stage is detected: those are the rows decided
            seen = [(f, ts) for f, ts in zip(features, types)
                    if pres["sign"] * f[pres["feature"]] > pres["threshold"]]
            rows = {t: np.array([[f[x] for x in feats] for f, ts in seen if t in ts])
                    for t, s in TAXONOMY.items() if s.stage == stage}
            rows = {t: r for t, r in rows.items() if len(r)}
            if not rows:
                continue
            allx = np.concatenate(list(rows.values()))
            scale = np.maximum(allx.std(axis=0), 1e-9)
            cal["types"][str(stage)] = {"features": list(feats), "scale": scale.tolist(),
                                        "means": {t: r.mean(axis=0).tolist()
                                                  for t, r in rows.items()}}
        for tk, feat in RAW.items():
            t, k = tk.split(".")
            p = TAXONOMY[t].param(k)
            has = [(f, ts[t][k]) for f, ts in zip(features, types) if t in ts]
            # calibrate on the rows where the stage is detected: those are the rows answered
            pres = cal["presence"][str(TAXONOMY[t].stage)]
            seen = [(f, v) for f, v in has if pres["sign"] * f[pres["feature"]] > pres["threshold"]]
            has = seen if len(seen) >= 5 else has
            if tk in IDENTITY:
                cal["values"][tk] = {"feature": feat, "a": 1.0, "b": 0.0}
                continue
            cal["values"][tk] = _fit_line(has, feat, float(np.mean(p.train)), tk in LOG_SCALE)
            if tk in REGIME:
                reg = REGIME[tk]
                cal["values"][tk]["regime"] = reg
                cal["values"][tk]["by_regime"] = {
                    str(r): _fit_line([(f, v) for f, v in has if f[reg] == r], feat, None)
                    for r in (0.0, 1.0)}
        return cls(cal)

    def predict(self, feats: Mapping[str, float]) -> dict[str, Any]:
        """The annotation the calibrated rules give for one image's `measure()` output."""
        cal = self.calibration
        chain = []
        for stage in sorted(STAGE_NAMES):
            pres = cal["presence"][str(stage)]
            if not pres["sign"] * feats[pres["feature"]] > pres["threshold"]:
                continue
            ranked = self.type_ranking(stage, feats)
            if not ranked:
                continue
            chain.append({"type": ranked[0], "params": self.params_for(ranked[0], feats)})
        return canonicalize({"degradations": chain})

    def type_ranking(self, stage: int, feats: Mapping[str, float]) -> list[str]:
        """The types of `stage`, most likely first under the calibrated rule: by distance of the
        standardized discriminating features to each type's class mean (a one-type stage: that
        type; [] where the stage has several types and no class means were calibrated)."""
        cands = [t for t, s in TAXONOMY.items() if s.stage == stage]
        if len(cands) == 1:
            return cands
        tc = self.calibration["types"].get(str(stage))
        if not tc:
            return []
        scale = np.array(tc["scale"])
        x = np.array([feats[f] for f in tc["features"]]) / scale
        dist = {c: float(((x - np.array(m) / scale) ** 2).sum()) for c, m in tc["means"].items()}
        return sorted(dist, key=lambda c: (dist[c], c))

    def params_for(self, type_name: str, feats: Mapping[str, float]) -> dict[str, Any]:
        """The values the calibrated lines give for `type_name` from one image's reading."""
        params = {}
        for p in TAXONOMY[type_name].params:
            m = self.calibration["values"][f"{type_name}.{p.key}"]
            if "regime" in m:
                sub = m["by_regime"][str(float(feats[m["regime"]]))]
                m = sub if sub is not None else m
            v = _apply_line(m, feats)
            if p.period:
                v = v % p.period
            params[p.key] = p.snap(v if np.isfinite(v) else float(np.mean(p.train)))
        return params

    def complete_one(self, image: np.ndarray) -> str:
        return self.complete_from(measure(image))

    def complete_from(self, f: Mapping[str, float]) -> str:
        """The answer for an image whose estimator reading (`measure`) is already at hand."""
        ann = self.predict(f)
        why = (f"Classical estimates: JPEG periodicity {f['jpeg_score']:.2f} at quality "
               f"{f['jpeg_quality']:.0f}, noise sigma {f['noise_sigma']:.1f}, edge width "
               f"{f['edge_width']:.1f} px, anisotropy {f['anisotropy']:.2f}, spectral cut-off "
               f"{f['cutoff']:.2f}, haze gradient {f['haze_gradient']:.2f}, brightest "
               f"{f['bright_p99']:.2f}, streaks {f['streaks']:.1f}%.")
        return render_answer(ann, why)

    def complete(self, images: Sequence[np.ndarray]) -> list[str]:
        return [self.complete_one(im) for im in images]

    def describe(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.calibration))


# ------------------------------------------------------------------------------------- fitting

def fit_baseline(name: str, root: str, samples: int | None,
                 storage: Any = None) -> "PriorBaseline | ClassicalBaseline":
    """`name` ('baseline:prior' or 'baseline:classical') fitted on the train split of the
    dataset at `root`: the prior on every train annotation, the classical baseline on the
    estimators' measurements of at most `samples` train images. A UserError when the dataset
    has no train rows."""
    images = name == "baseline:classical"
    cols = ["annotation"] + (["degraded"] if images else [])
    rows = read_table(root, ["train"], cols, samples if images else None, storage).to_pylist()
    if not rows:
        raise UserError(f"{name} is calibrated on the train split, and dataset '{root}' has no "
                        f"train rows")
    annotations = [json.loads(r["annotation"]) for r in rows]
    if not images:
        return PriorBaseline.fit(annotations)
    return ClassicalBaseline.fit([measure(decode_png(r["degraded"])) for r in rows], annotations)
