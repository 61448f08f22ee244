"""Secrets come from the environment only; nothing secret reaches logs, params or artifacts.

`redacted(cfg)` is the view of a config that may be logged; `scrub(text)` removes the values of
known secret variables (and passwords in URLs) from any text before it is written anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields, is_dataclass
from typing import Any

from .core import to_dict

#: environment variables whose values are secrets
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME",
    "RAY_AUTH_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY",
)
# whole name parts only: "ray_auth_token" is secret, "tokenizer" and "max_tokens" are not
_SECRET_NAME = re.compile(r"(^|_)(secret|password|passwd|token|api_key|apikey|credentials?)(_|$)",
                          re.I)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")
MASK = "***"


def _environ() -> dict[str, str]:
    """A snapshot of os.environ. Iterating it raises KeyError when another thread removes a
    variable meanwhile (MLflow's telemetry thread does, at start-up): retry, never skip."""
    for _ in range(100):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return dict(os.environ)


def secret_values() -> list[str]:
    """Current values of the secret variables (long enough to be worth masking)."""
    env = _environ()
    vals = {env.get(k, "") for k in SECRET_ENV_VARS}
    vals |= {v for k, v in env.items() if _SECRET_NAME.search(k) and v}
    return sorted((v for v in vals if len(v) >= 6), key=len, reverse=True)


def scrub(text: str) -> str:
    """`text` with secret values and URL passwords masked."""
    if not isinstance(text, str):
        return text
    out = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    for v in secret_values():
        out = out.replace(v, MASK)
    return out


def redacted(cfg: Any) -> dict[str, Any]:
    """A nested dict of `cfg` safe to log: secret fields masked, secret values scrubbed."""
    data = to_dict(cfg) if is_dataclass(cfg) else dict(cfg)
    secret_keys = _secret_fields(cfg) if is_dataclass(cfg) else set()

    def walk(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {k: (MASK if (f"{prefix}{k}" in secret_keys or _SECRET_NAME.search(str(k)))
                        and node[k] not in (None, "") else walk(node[k], f"{prefix}{k}."))
                    for k in node}
        if isinstance(node, list):
            return [walk(x, prefix) for x in node]
        return scrub(node) if isinstance(node, str) else node

    return walk(data, "")


def _secret_fields(cfg: Any, prefix: str = "") -> set[str]:
    out = set()
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out |= _secret_fields(v, f"{prefix}{f.name}.")
        elif (f.metadata or {}).get("secret"):
            out.add(f"{prefix}{f.name}")
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
