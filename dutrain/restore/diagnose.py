"""Where the gap to the oracle comes from (`restore.diagnose=true`, issue 17).

Two mixed annotations per image, each restored with the same operators as the others:

- ``oracle_type``: the true chain's types with the predictor's values — the predictor's own
  values where it named the type, else the values the classical estimators give for that type
  (`fill`; for `model=baseline:classical` these are the predictor's own calibrated lines);
- ``oracle_values``: the predictor's chain with the true values for every type it got right
  (a wrongly named type keeps its predicted values: there is no true value for it).

Per type, with plain = the predictor's own answer:

- oracle − oracle_type: what wrong *values* cost (the types are right in both);
- oracle − oracle_values: what wrong *types* cost (the values are right wherever the type is);
- oracle − identity: what the inverse *operator* can give at all; where even the oracle gains
  little (< `OPERATOR_GAIN`), a better answer cannot gain much either: the operator limits it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from dutrain.schema import CLEAN, TYPES, canonicalize

#: a type whose oracle gains less than this over identity (dB) is limited by its operator
OPERATOR_GAIN = 1.0
KINDS = ("oracle_type", "oracle_values")

Fill = Callable[[str], dict[str, Any]]


def oracle_type(true: Mapping[str, Any], predicted: Mapping[str, Any] | None,
                fill: Fill) -> tuple[dict[str, Any], int]:
    """(true types with predicted values, number of types whose values came from `fill`)."""
    pred = {d["type"]: d["params"] for d in (predicted or {}).get("degradations", [])}
    chain, filled = [], 0
    for d in true["degradations"]:
        if d["type"] in pred:
            chain.append({"type": d["type"], "params": dict(pred[d["type"]])})
        else:
            chain.append({"type": d["type"], "params": fill(d["type"])})
            filled += 1
    return canonicalize({"degradations": chain}), filled


def oracle_values(true: Mapping[str, Any], predicted: Mapping[str, Any] | None
                  ) -> dict[str, Any]:
    """The predicted types, each with its true values where the type is in `true`."""
    real = {d["type"]: d["params"] for d in true["degradations"]}
    chain = [{"type": d["type"], "params": dict(real.get(d["type"], d["params"]))}
             for d in (predicted or {}).get("degradations", [])]
    return canonicalize({"degradations": chain})


def attribution(split: str, metrics: Mapping[str, float], counts: Mapping[str, int]
                ) -> tuple[dict[str, float], list[str]]:
    """Per type: the PSNR gap plain → oracle split into its value, type and operator parts
    (metric keys ``{split}/gap/{part}/{type}``) and a markdown table naming the main cause."""
    out: dict[str, float] = {}
    lines = ["## Gap to the oracle (restore.diagnose)", "",
             "PSNR dB. value cost = oracle − oracle_type (true types, predicted values); type cost "
             "= oracle − oracle_values (predicted types, true values); oracle gain = oracle − "
             "identity (what the inverse operator gives with the true answer).", "",
             "| type | n | identity | oracle | plain | oracle_type | oracle_values | gap | "
             "value cost | type cost | oracle gain | cause |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in ["all", CLEAN, *TYPES]:
        sfx = "" if g == "all" else f"/{g}"
        v = {k: metrics.get(f"{split}/psnr/{k}{sfx}")
             for k in ("identity", "oracle", "predicted", *KINDS)}
        if any(x is None for x in v.values()):
            continue
        gap = v["oracle"] - v["predicted"]
        value_cost, type_cost = v["oracle"] - v["oracle_type"], v["oracle"] - v["oracle_values"]
        op = v["oracle"] - v["identity"]
        out.update({f"{split}/gap/oracle{sfx}": gap, f"{split}/gap/values{sfx}": value_cost,
                    f"{split}/gap/type{sfx}": type_cost, f"{split}/gap/operator{sfx}": op})
        lines.append(f"| {g} | {counts.get('_total' if g == 'all' else g, 0)} | "
                     f"{v['identity']:.2f} | {v['oracle']:.2f} | {v['predicted']:.2f} | "
                     f"{v['oracle_type']:.2f} | {v['oracle_values']:.2f} | {gap:+.2f} | "
                     f"{value_cost:+.2f} | {type_cost:+.2f} | {op:+.2f} | "
                     f"{cause(gap, value_cost, type_cost, math.inf if g == CLEAN else op)} |")
    return out, lines


def cause(gap: float, value_cost: float, type_cost: float, operator_gain: float) -> str:
    """The main cause of a gap: '-' where there is none to explain (≤ 0.5 dB), else the larger
    of the value and type costs ('values+type' when within 0.5 dB of each other); '(operator
    gains < 1 dB)' is added where even the oracle gains little over identity."""
    op = f" (operator gains < {OPERATOR_GAIN:g} dB)" if operator_gain < OPERATOR_GAIN else ""
    if gap <= 0.5 and max(value_cost, type_cost) <= 0.5:
        return "-" + op
    if abs(value_cost - type_cost) <= 0.5:
        return "values+type" + op
    return ("values" if value_cost > type_cost else "type") + op


def filled_share(filled: Sequence[int], types: Sequence[int]) -> float:
    """Share of true steps whose values came from `fill` (the predictor did not name them)."""
    return sum(filled) / max(sum(types), 1)
