"""A sweep's search space: parsed, checked against the base verb's schema, expanded to trials.

Everything here runs before Ray starts: an unknown key names the nearest valid one, and every
trial's config is built and validated (`plan`) so a bad value fails the command, not a trial.

Expansion follows Ray Tune's semantics: `num_samples` repeats the grid (the product of every
`grid` key), each repeat drawing fresh values for the random keys (`choice`, `uniform`,
`loguniform`) from one seeded generator — the same seed gives the same trials, and raising
`num_samples` keeps the trials drawn before. Each trial's key hashes its resolved config (without
the paths and tracking the sweep sets), so a rerun recognises the trials it already finished.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import random
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dutrain.config import VERBS, all_keys, load_config, to_dict
from dutrain.config.core import ConfigError, _field_for
from dutrain.config.secrets import redacted
from dutrain.tracking.mlflow_run import tracking_uri

#: distribution name → what it takes
DISTRIBUTIONS = {"grid": "a non-empty list of values (every value is tried)",
                 "choice": "a non-empty list of values (one drawn per trial)",
                 "uniform": "[low, high] numbers",
                 "loguniform": "[low, high] numbers > 0"}
#: keys the sweep sets itself in every trial (the trial's own folder, its MLflow run, the cluster)
RESERVED = ("output", "workdir", "storage_root", "tracking", "ray")


class SpaceError(ConfigError):
    """A bad search space (unknown key, bad distribution); the message names the fix."""


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted key of the base verb's config
    kind: str  # one of DISTRIBUTIONS
    values: tuple[Any, ...]  # the listed values, or (low, high)
    integer: bool = False  # the key is an integer: draws are rounded

    def draw(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return self.values[rng.randrange(len(self.values))]
        lo, hi = self.values
        if self.kind == "uniform":
            v = rng.uniform(lo, hi)
        else:
            v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return int(round(v)) if self.integer else float(v)

    @property
    def numeric(self) -> bool:
        return self.kind in ("uniform", "loguniform") or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


@dataclass(frozen=True)
class Trial:
    name: str  # t<index>-<key>: the MLflow run name and the folder under trials/
    key: str  # hash of the resolved config and repeat index
    overrides: dict[str, Any]  # dotted key → value: what the space chose
    config: dict[str, Any]  # the resolved, validated config of the base verb (plain dict)


def output_key(verb: str) -> str:
    return "workdir" if verb == "pipeline" else "output"


def _is_spec(node: Any) -> bool:
    return isinstance(node, Mapping) and len(node) == 1 and next(iter(node)) in DISTRIBUTIONS


def _flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys → distribution specs; nested sections (`sft: {lr: {grid: [...]}}`) allowed."""
    out: dict[str, Any] = {}
    for k, v in space.items():
        key = f"{prefix}{k}"
        if _is_spec(v):
            out[key] = v
        elif isinstance(v, Mapping) and len(v) == 1 and isinstance(next(iter(v.values())), list):
            raise SpaceError(f"unknown distribution '{next(iter(v))}' for 'space.{key}' "
                             f"(allowed: {', '.join(DISTRIBUTIONS)})")
        elif isinstance(v, Mapping) and v and not (set(v) & set(DISTRIBUTIONS)):
            out.update(_flatten_space(v, f"{key}."))
        else:
            raise SpaceError(f"bad value for 'space.{key}': {v!r} (allowed: one of "
                             + "; ".join(f"{{{n}: {d}}}" for n, d in DISTRIBUTIONS.items()) + ")")
    return out


def parse_space(space: Mapping[str, Any], verb: str) -> list[Dimension]:
    """The dimensions of `space`, each key checked against `verb`'s config schema."""
    cls = VERBS[verb].config_class()
    known = all_keys(cls)
    dims = []
    for key, spec in _flatten_space(space).items():
        if key.split(".")[0] in RESERVED:
            raise SpaceError(f"bad key in 'space': '{key}' (the sweep sets "
                             f"{', '.join(RESERVED)} for every trial)")
        if key not in known:
            inside = [k for k in known if k.startswith(key + ".")]
            if inside:
                raise SpaceError(f"bad key in 'space': '{key}' is a section of '{verb}'; name "
                                 f"one of its keys, e.g. '{inside[0]}'")
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpaceError(f"unknown key '{key}' in 'space' for '{verb}'{hint}; see `dutrain "
                             f"{verb} --help` for its keys")
        (kind, values), = spec.items()
        where = f"space.{key}.{kind}"
        if not isinstance(values, (list, tuple)) or not values:
            raise SpaceError(f"bad value for '{where}': {values!r} (allowed: "
                             f"{DISTRIBUTIONS[kind]})")
        _, tp = _field_for(cls, key)
        integer = tp is int or (int in typing.get_args(tp) and float not in typing.get_args(tp))
        if kind in ("uniform", "loguniform"):
            ok = (len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in values) and values[0] < values[1]
                  and (kind == "uniform" or values[0] > 0))
            if not ok:
                raise SpaceError(f"bad value for '{where}': {list(values)!r} (allowed: "
                                 f"{DISTRIBUTIONS[kind]}, low < high)")
            values = (float(values[0]), float(values[1]))
        dims.append(Dimension(key, kind, tuple(values), integer))
    if not dims:
        raise SpaceError("missing value for 'space' (allowed: a mapping of the verb's keys to "
                         "distributions)")
    return dims


def expand(dims: list[Dimension], num_samples: int, seed: int) -> list[tuple[int, dict]]:
    """(repeat index, dotted key → value) per trial, in a fixed order."""
    grid = [d for d in dims if d.kind == "grid"]
    rand = [d for d in dims if d.kind != "grid"]
    rng = random.Random(seed)
    out = []
    for repeat in range(num_samples):
        for combo in itertools.product(*[d.values for d in grid]):
            chosen = dict(zip([d.key for d in grid], combo))
            chosen.update({d.key: d.draw(rng) for d in rand})
            out.append((repeat, {d.key: chosen[d.key] for d in dims}))  # space order
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} → {'a': {'b': 1}} (nested mappings are merged)."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        node = out
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(v, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = merge(node[parts[-1]], nest(v))
        else:
            node[parts[-1]] = nest(v) if isinstance(v, Mapping) else v
    return out


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: b's values win; mappings merge key by key."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def trial_key(verb: str, config: Any, repeat: int) -> str:
    conf = redacted(config)
    for k in RESERVED:
        conf.pop(k, None)
    blob = json.dumps({"verb": verb, "config": conf, "repeat": repeat}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_config(cfg: Any, overrides: Mapping[str, Any], folder: Path | str,
                 run_name: str | None = None) -> Any:
    """The base verb's validated config for one trial: base YAML ← `cfg.overrides` ← the trial's
    choices ← its own folder and the sweep's tracking."""
    verb = cfg.verb
    cls = VERBS[verb].config_class()
    tracking = {**to_dict(cfg.tracking), "run_name": run_name, "enabled": True,
                "uri": tracking_uri(cfg.tracking.uri)}  # trials run elsewhere: an absolute URI
    fixed = {output_key(verb): str(folder), "tracking": tracking}
    layer = merge(merge(nest(dict(cfg.overrides)), nest(dict(overrides))), fixed)
    try:
        return load_config(cls, cfg.base, overrides=layer, verb=verb)
    except ConfigError as exc:
        chosen = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise SpaceError(f"{exc} (in the trial {chosen})" if chosen else str(exc)) from None


def plan(cfg: Any) -> list[Trial]:
    """Every trial of the sweep `cfg`, each config built and validated (raises SpaceError)."""
    if cfg.base is not None and not Path(cfg.base).is_file():
        raise SpaceError(f"config file '{cfg.base}' (base) does not exist")
    cls = VERBS[cfg.verb].config_class()
    known = all_keys(cls)
    for key in _flatten_keys(dict(cfg.overrides)):
        if key not in known and not any(k.startswith(key + ".") for k in known) and \
                not any(key.startswith(k + ".") for k in known):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpaceError(f"unknown key '{key}' in 'overrides' for '{cfg.verb}'{hint}")
    dims = parse_space(cfg.space, cfg.verb)
    trials = []
    root = Path(cfg.output).absolute() / "trials"
    # a trial keeps the folder (and run name) it had, even when a changed space renumbers it
    had = {p.name.split("-", 1)[1]: p.name for p in root.glob("t*-*") if p.is_dir()}
    for i, (repeat, chosen) in enumerate(expand(dims, cfg.num_samples, cfg.seed)):
        conf = build_config(cfg, chosen, root / "pending")
        key = trial_key(cfg.verb, conf, repeat)
        name = had.get(key, f"t{i:03d}-{key}")
        conf = build_config(cfg, chosen, root / name, run_name=name)
        trials.append(Trial(name, key, chosen, to_dict(conf)))
    return trials


def _flatten_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out += _flatten_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out
