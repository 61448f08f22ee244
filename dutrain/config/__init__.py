"""Typed configs: one dataclass per verb, defaults ← YAML ← key=value, validated and frozen."""

from .common import RayConfig, StorageConfig, TrackingConfig
from .core import (
    ConfigError,
    all_keys,
    configclass,
    help_rows,
    load_config,
    option,
    parse_overrides,
    replace,
    to_dict,
)
from .secrets import flatten, redacted, scrub
from .verbs import VERBS, Verb

__all__ = ["RayConfig", "StorageConfig", "TrackingConfig", "ConfigError", "all_keys",
           "configclass", "help_rows", "load_config", "option", "parse_overrides", "replace",
           "to_dict", "flatten", "redacted", "scrub", "VERBS", "Verb"]
