"""A learned no-reference check for one inverse step: predicted PSNR gain from the estimators.

The controller's hand rules (`controller.check_step`) catch the failures they were written for
(amplified noise, new blockiness, clipping); they do not see a haze inversion on a clear photo or
an upsampling step on an image that was never downsampled, and those cost the most (a clean
image's PSNR falls from the 60 dB cap by 10–20 dB). The judge learns what a step does from
examples with clean references:

- **records** (`judge_records`): for each (degraded, clean) pair, every restoring type's step —
  with the classical estimators' values and `draws` random values over the type's train range
  (and the true values where the pair holds that type) — applied alone; per step, the
  estimators' reading before and after it and the PSNR gain against clean. The proposals are
  deliberately wrong as often as right, so the judge sees what a wrong step does; it never sees a
  predictor, so one judge serves the classical baseline and any VLM.
- **model** (`Judge`): per type, a gradient-boosted regressor from (reading before, change of
  the reading, parameters) to the gain, clipped to ±`GAIN_CLIP` dB so that a clean image's
  capped PSNR does not dominate the fit.
- **storage**: the records themselves (JSON), refitted on load (deterministic, under a second):
  no pickled estimator is ever loaded. Collecting them is the expensive part (≈ 1 s per train
  row on one core), so they are cached by content (`records_key`: the rows' bytes, the
  settings, the classical calibration and the source of the code that makes them).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dutrain.degrade import to_float, to_uint8
from dutrain.errors import UserError
from dutrain.evaluate.quality import psnr
from dutrain.runtime.cache import cache_root
from dutrain.schema import CLEAN, TAXONOMY, TYPES

from .classical import INVERSES, State

JUDGE_VERSION = 1
GAIN_CLIP = 10.0  # dB: a step on a clean image can cost 30 dB at the cap; its sign is what counts
RESTORING = tuple(t for t in TYPES if t != CLEAN)

Reading = Callable[[np.ndarray], Mapping[str, float]]


def features(keys: Sequence[str], before: Mapping[str, float], after: Mapping[str, float],
             params: Mapping[str, Any]) -> list[float]:
    """The judge's input for one step: the reading before it, the change the step made to
    each reading, and the step's parameters (sorted by key: one layout per type)."""
    b = [float(before[k]) for k in keys]
    return b + [float(after[k]) - x for k, x in zip(keys, b)] + \
        [float(v) for _, v in sorted(params.items())]


def random_params(type_name: str, rng: np.random.Generator) -> dict[str, Any]:
    """A value per key drawn uniformly over the type's train range, rounded to the key's
    decimals (not snapped to its grid step: `ParamSpec.snap` would be the grid's own rule)."""
    out: dict[str, Any] = {}
    for ps in TAXONOMY[type_name].params:
        lo, hi = ps.train
        v = float(rng.uniform(lo, hi))
        out[ps.key] = int(round(v)) if ps.integer else round(v, ps.decimals)
    return out


def apply_step(x: np.ndarray, type_name: str, params: Mapping[str, Any], st: State
               ) -> tuple[np.ndarray | None, str]:
    """One inverse step on a float image, clipped to [0, 1], and "" — or (None, why) where the
    operator fails (a PSF larger than the image, a missing parameter) or gives a non-finite or
    misshaped result (`st` is then as the operator left it)."""
    try:
        with np.errstate(all="ignore"):
            y = INVERSES[type_name](x, params, st)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError, IndexError, KeyError,
            TypeError) as exc:
        return None, f"operator failed: {exc!r}" if isinstance(exc, KeyError) else \
            f"operator failed: {exc}"
    if y.shape != x.shape or not np.all(np.isfinite(y)):
        return None, "non-finite or misshaped result"
    return np.clip(y, 0, 1).astype(np.float32), ""


Pair = tuple[np.ndarray, np.ndarray, Mapping[str, Any]]  # degraded, clean, annotation
ParamsFor = Callable[[str, Mapping[str, float]], Mapping[str, Any]]


def no_params(type_name: str, reading: Mapping[str, float]) -> Mapping[str, Any]:
    """A `ParamsFor` without estimates (only random and true values are tried); picklable for
    the worker processes."""
    raise KeyError(type_name)


def pair_records(pair: Pair, params_for: ParamsFor, read: Reading, draws: int,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
    """The judge's records of one (degraded, clean, annotation) triple: every restoring type
    with the classical estimators' values (`params_for(type, reading)`; an error skips that
    candidate), `draws` random values and the true values where the pair holds the type."""

    deg, clean, ann = pair
    before = dict(read(deg))
    ident = psnr(clean, deg)
    x = to_float(deg)
    true = {d["type"]: d["params"] for d in ann.get("degradations", [])}
    out: list[dict[str, Any]] = []
    for t in RESTORING:
        cands: list[Mapping[str, Any]] = []
        try:
            cands.append(params_for(t, before))
        except (KeyError, ValueError, TypeError):
            pass
        cands += [random_params(t, rng) for _ in range(draws)]
        if t in true:
            cands.append(true[t])
        for p in cands:
            y, _ = apply_step(x, t, p, State())
            if y is None:
                continue
            y_u8 = to_uint8(y)
            out.append({"type": t, "params": dict(p), "before": before,
                        "after": dict(read(y_u8)), "gain": psnr(clean, y_u8) - ident})
    return out


def _pair_job(args: tuple[Pair, ParamsFor, Reading, int, int, int]) -> list[dict[str, Any]]:
    pair, params_for, read, draws, seed, k = args
    return pair_records(pair, params_for, read, draws, np.random.default_rng([seed, k]))


def judge_records(pairs: Sequence[Pair], params_for: ParamsFor, read: Reading, draws: int = 2,
                  seed: int = 0, workers: int = 1, progress: str = "") -> list[dict[str, Any]]:
    """Training records of the judge from (degraded, clean, annotation) triples, over `workers`
    processes (each pair's random values come from (seed, its index): the same records for
    any worker count); `progress`: a progress bar's title on stderr."""
    from tqdm import tqdm
    jobs = [(p, params_for, read, draws, seed, k) for k, p in enumerate(pairs)]
    bar = tqdm(total=len(jobs), desc=progress, unit="img", disable=not progress,
               mininterval=2.0, file=sys.stderr)
    out: list[dict[str, Any]] = []
    with bar:
        if workers <= 1:
            for j in jobs:
                out += _pair_job(j)
                bar.update()
            return out
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            for rs in ex.map(_pair_job, jobs, chunksize=2):
                out += rs
                bar.update()
    return out


#: the modules whose code decides a record (operators, estimators, physics, answer schema)
_RECORD_CODE = ("restore", "degrade", "schema", "evaluate/estimators.py", "evaluate/baselines.py",
                "evaluate/quality.py")


def code_digest() -> str:
    """sha256 over the source of the modules records depend on: an edit there is a new key."""
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in _RECORD_CODE:
        p = pkg / sub
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def records_key(rows: Sequence[Mapping[str, Any]], calibration: Mapping[str, Any], draws: int,
                seed: int) -> str:
    """Content key of `judge_records` over these dataset rows (`degraded`, `clean`,
    `annotation`): same rows, settings, calibration and code ⇒ same records."""
    h = hashlib.sha256(json.dumps({"version": JUDGE_VERSION, "draws": draws, "seed": seed,
                                   "code": code_digest(), "calibration": calibration},
                                  sort_keys=True, default=str).encode())
    for r in rows:
        for c in ("degraded", "clean", "annotation"):
            v = r[c]
            h.update(v if isinstance(v, bytes) else str(v).encode())
            h.update(b"\0")
    return h.hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cache_root() / "judge" / f"{key}.json"


@dataclass
class Judge:
    """Per type, the predicted PSNR gain (dB) of a step from the estimators' readings."""

    records: list[dict[str, Any]]
    source: str = ""
    keys: list[str] = field(default_factory=list)
    #: the quantile of the gain the judge predicts: below 0.5 it is cautious, a step must gain
    #: even where the judge's error runs against it (a wrong haze or exposure step costs 30 dB)
    quantile: float = 0.2
    models: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor
        if not self.records:
            raise UserError("the restoration judge has no training records (restore.judge_rows "
                            "found no usable (degraded, clean) pairs)")
        if not self.keys:
            self.keys = sorted(self.records[0]["before"])
        for t in RESTORING:
            rows = [r for r in self.records if r["type"] == t]
            if len(rows) < 10:
                continue  # too few to learn from: steps of this type get no prediction
            X = np.array([features(self.keys, r["before"], r["after"], r["params"])
                          for r in rows])
            y = np.clip([float(r["gain"]) for r in rows], -GAIN_CLIP, GAIN_CLIP)
            self.models[t] = HistGradientBoostingRegressor(
                loss="quantile", quantile=self.quantile, max_iter=200, learning_rate=0.05,
                max_leaf_nodes=15, min_samples_leaf=10, random_state=0).fit(X, y)

    def gain(self, type_name: str, params: Mapping[str, Any], before: Mapping[str, float],
             after: Mapping[str, float]) -> float:
        """Predicted PSNR gain of the step; −inf for a type the judge has no model of."""
        from threadpoolctl import threadpool_limits
        m = self.models.get(type_name)
        if m is None:
            return -math.inf
        # one row: OpenMP threads only cost here (and oversubscribe the cores of parallel runs)
        with threadpool_limits(1):
            return float(m.predict(np.array([features(self.keys, before, after, params)]))[0])

    def summary(self) -> dict[str, dict[str, float]]:
        """Per type: records and the share of them that gained."""
        out: dict[str, dict[str, float]] = {}
        for t in RESTORING:
            g = [float(r["gain"]) for r in self.records if r["type"] == t]
            if g:
                out[t] = {"n": float(len(g)), "gained": float(np.mean(np.array(g) > 0))}
        return out

    def save(self, path: Path) -> None:
        """Write the records (atomically: a reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": JUDGE_VERSION, "source": self.source,
                                   "keys": self.keys, "records": self.records}) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, quantile: float = 0.2) -> "Judge":
        """The judge of a `judge.json` written by `save`, refitted (UserError when unusable)."""
        p = Path(path)
        try:
            obj = json.loads(p.read_text())
            if obj.get("version") != JUDGE_VERSION or not isinstance(obj.get("records"), list):
                raise ValueError("not a dutrain judge file")
            bad = sorted({str(r["type"]) for r in obj["records"]} - set(RESTORING))
            if bad:
                raise ValueError(f"unknown types {', '.join(bad)}")
            return cls(obj["records"], str(obj.get("source", p)), list(obj["keys"]), quantile)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"restore.judge '{p}' is not usable: {exc}") from None
