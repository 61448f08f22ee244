"""Config machinery: defaults ← YAML file ← key=value overrides, validated, frozen.

Every verb has one dataclass config. Fields carry their documentation and constraints in
`field(metadata=...)`: ``doc`` (help text), ``choices`` (allowed values), ``min``/``max``
(numeric bounds), ``secret`` (never logged). A dataclass may add a ``validate(self)`` method
for cross-field checks that raises :class:`ConfigError`.

Errors name the key, the value and what is allowed, and suggest the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dutrain.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A bad config: unknown key, bad value or unreadable file. The message says what to fix."""


def option(default: Any = MISSING, doc: str = "", *, default_factory: Any = MISSING,
           choices: list[Any] | tuple[Any, ...] | None = None, min: float | None = None,
           max: float | None = None, secret: bool = False) -> Any:
    """A documented config field (use instead of dataclasses.field)."""
    meta = {"doc": doc, "choices": tuple(choices) if choices else None, "min": min, "max": max,
            "secret": secret}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------- keys

def _field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def _resolved_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside `tp` (also through Optional[...]), else None."""
    if is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if is_dataclass(arg):
            return arg
    return None


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class (nested sections expanded)."""
    out = []
    for f in fields(cls):
        sub = _dataclass_of(_resolved_type(cls, f.name))
        if sub is not None:
            out += all_keys(sub, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _unknown_key_error(key: str, cls: type, verb: str) -> ConfigError:
    known = all_keys(cls)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{key}' for '{verb}'{hint}; allowed keys: {', '.join(known)}")


def _check_keys(data: Any, cls: type, verb: str, prefix: str = "",
                root: type | None = None) -> None:
    root = root or cls
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or verb}' must be a mapping of keys to values, "
                          f"got {type(data).__name__}")
    fmap = _field_map(cls)
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fmap:
            raise _unknown_key_error(key, root, verb)
        sub = _dataclass_of(_resolved_type(cls, k))
        if sub is not None and v is not None:
            _check_keys(v, sub, verb, f"{key}.", root)


# ---------------------------------------------------------------------------------- overrides

def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=value` strings → nested dict; values parsed as YAML scalars/lists (`x=[1,2]`)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise ConfigError(f"bad override '{item}': '{key}' is not a dotted key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"bad override '{item}': '{p}' is set to a value and a section")
        node[parts[-1]] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, "
                          f"got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------- validation

def _describe(f: dataclasses.Field, tp: Any) -> str:
    meta = f.metadata or {}
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    base = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "a list"
    if origin in (dict,):
        return "a mapping"
    name = base.get(tp) or (base.get(args[0]) if args else None) or getattr(tp, "__name__", str(tp))
    bounds = []
    if meta.get("min") is not None:
        bounds.append(f">= {meta['min']}")
    if meta.get("max") is not None:
        bounds.append(f"<= {meta['max']}")
    if type(None) in typing.get_args(tp):
        name += " or null"
    return name + (" " + " and ".join(bounds) if bounds else "")


def _bad_value(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"bad value for '{key}': {value!r} (allowed: {allowed})")


def _validate_fields(obj: Any, prefix: str = "") -> None:
    cls = type(obj)
    for f in fields(obj):
        tp = _resolved_type(cls, f.name)
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            _validate_fields(value, f"{key}.")
            continue
        meta = f.metadata or {}
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise _bad_value(key, value, _describe(f, tp))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if meta.get("min") is not None and value < meta["min"]:
                raise _bad_value(key, value, _describe(f, tp))
            if meta.get("max") is not None and value > meta["max"]:
                raise _bad_value(key, value, _describe(f, tp))
    hook = getattr(obj, "validate", None)
    if callable(hook):
        hook()


def _omegaconf_error(exc: OmegaConfBaseException, cls: type,
                     merged_from: dict[str, Any]) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    value = _lookup(merged_from, key)
    f, tp = _field_for(cls, key)
    allowed = _describe(f, tp) if f is not None else "see `dutrain VERB --help`"
    return _bad_value(key, value, allowed)


def _lookup(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _field_for(cls: type, key: str) -> tuple[dataclasses.Field | None, Any]:
    parts = key.split(".") if key else []
    cur = cls
    for i, p in enumerate(parts):
        fmap = _field_map(cur)
        if p not in fmap:
            return None, None
        tp = _resolved_type(cur, p)
        if i == len(parts) - 1:
            return fmap[p], tp
        cur = _dataclass_of(tp)
        if cur is None:
            return None, None
    return None, None


# ------------------------------------------------------------------------------------- public

def load_config(cls: type[T], config_file: str | os.PathLike | None = None,
                overrides: list[str] | dict[str, Any] | None = None, verb: str | None = None) -> T:
    """defaults ← YAML ← overrides → a validated, frozen instance of `cls`.

    Raises ConfigError naming the key, the value and what is allowed.
    """
    verb = verb or cls.__name__.removesuffix("Config").lower()
    layers: list[dict[str, Any]] = []
    if config_file:
        layers.append(read_yaml(config_file))
    if overrides:
        layers.append(parse_overrides(overrides) if isinstance(overrides, list)
                      else dict(overrides))
    expand = getattr(cls, "expand_layers", None)
    if callable(expand):  # e.g. the pipeline puts each stage's own YAML under its section
        layers = expand(layers)
    for layer in layers:
        _check_keys(layer, cls, verb)
    merged = OmegaConf.structured(cls)
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(layer))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, cls, layer) from None
    try:
        OmegaConf.resolve(merged)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            f, tp = _field_for(cls, missing[0])
            raise ConfigError(f"missing value for '{missing[0]}' (allowed: "
                              f"{_describe(f, tp) if f else 'a value'})")
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad config for '{verb}': {exc}") from None
    _validate_fields(obj)
    _freeze(obj)
    return obj  # type: ignore[return-value]


class FrozenConfigError(AttributeError):
    pass


def _freeze(obj: Any) -> None:
    """Make a validated config read-only (a config is resolved once, before any work starts)."""
    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            _freeze(v)
        elif isinstance(v, list):
            object.__setattr__(obj, f.name, tuple(v))
    object.__setattr__(obj, "_frozen", True)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists)."""
    def conv(v: Any) -> Any:
        if is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def replace(cfg: T, **changes: Any) -> T:
    """A copy of a frozen config with top-level or dotted (`a__b`) keys changed, revalidated."""
    data = to_dict(cfg)
    for k, v in changes.items():
        node = data
        parts = k.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return load_config(type(cfg), overrides=data)


def help_rows(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """(key, default, doc) for every key of a config class, for `dutrain VERB --help`.

    `defaults`: an instance whose values are the defaults shown (a section whose factory
    changes its class's defaults, e.g. the offline stage's sampling temperature)."""
    rows = []
    for f in fields(cls):
        tp = _resolved_type(cls, f.name)
        sub = _dataclass_of(tp)
        key = f"{prefix}{f.name}"
        if sub is not None:
            inner = getattr(defaults, f.name, None) if defaults is not None else None
            if inner is None and f.default_factory is not MISSING:  # type: ignore[misc]
                inner = f.default_factory()  # type: ignore[misc]
            rows += help_rows(sub, f"{key}.", inner if isinstance(inner, sub) else None)
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "???"
        meta = f.metadata or {}
        doc = meta.get("doc", "")
        if meta.get("choices"):
            doc += f" [{' | '.join(str(c) for c in meta['choices'])}]"
        shown = (repr(default) if isinstance(default, str) else
                 yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n..."))
        rows.append((key, shown, doc))
    return rows


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    if getattr(self, "_frozen", False):
        raise FrozenConfigError(f"config is frozen: cannot set '{name}' "
                                f"(use dutrain.config.replace)")
    object.__setattr__(self, name, value)


def configclass(cls: type[T]) -> type[T]:
    """Decorator for config dataclasses: a dataclass whose instances freeze after validation."""
    cls = dataclasses.dataclass(cls)
    cls.__setattr__ = _frozen_setattr  # type: ignore[assignment]
    return cls
