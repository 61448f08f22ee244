"""No literal secret anywhere in cluster/ or infra/: credentials come from Kubernetes secrets,
instance roles, Secrets Manager or a git-ignored env file, never from the files we ship.

`literal_secrets(path)` is the scanner (test_infra_files.py uses it too); it is itself tested on
planted secrets so the repository scans can fail.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from dutrain.config.secrets import SECRET_ENV_VARS, redacted

ROOT = Path(__file__).resolve().parents[2]

_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "password in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]+:(?![$<{])[^@/\s]+@", re.I),
}
_ASSIGNMENT = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\S*)")


def _secret_name(name: str) -> bool:
    return name.upper() in SECRET_ENV_VARS or redacted({name: "x" * 8})[name] != "x" * 8


def _reference(value: str) -> bool:
    """A value that points at a secret instead of holding one: empty, a variable, a path."""
    v = value.strip().strip("'\"")
    return v == "" or v.startswith(("$", "/", "~", "<")) or v.lower() in ("null", "none")


def _walk(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and ("data" in node or "stringData" in node):
            yield f"{where}: a Kubernetes Secret with data (create secrets out of band)"
        if isinstance(node.get("name"), str) and "value" in node and _secret_name(node["name"]) \
                and not _reference(str(node["value"])):
            yield f"{where}: env {node['name']} has a literal value (use valueFrom.secretKeyRef)"
        for k, v in node.items():
            if isinstance(v, (str, int, float)) and _secret_name(str(k)) \
                    and not _reference(str(v)):
                yield f"{where}.{k}: literal value for a secret key"
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}[{i}]")
    elif isinstance(node, str):
        for name, value in _ASSIGNMENT.findall(node):
            if _secret_name(name) and not _reference(value):
                yield f"{where}: {name}=... assigns a literal secret"


def literal_secrets(path: Path) -> list[str]:
    """Problems found in one file: literal credentials by pattern, and secret-named keys,
    env entries and NAME=VALUE assignments holding literal values."""
    text = path.read_text()
    found = [f"{path.name}: {what}" for what, rx in _PATTERNS.items() if rx.search(text)]
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        for i, doc in enumerate(yaml.safe_load_all(text)):
            found += _walk(doc, f"{path.name}#{i}")
    elif suffix == ".json":
        found += _walk(json.loads(text), path.name)
    elif suffix == ".ini":
        parser = configparser.ConfigParser()
        parser.read_string(text)
        found += _walk({s: dict(parser[s]) for s in parser.sections()}, path.name)
    else:  # shell, Dockerfile, env files, SQL, Markdown: NAME=VALUE assignments
        lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        found += _walk("\n".join(lines), path.name)
    return found


def shipped_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.name != ".env")


@pytest.mark.parametrize("content, suffix", [
    ("env:\n  - {name: AWS_SECRET_ACCESS_KEY, value: wJalrXUtnFEMI}\n", ".yaml"),
    ("apiVersion: v1\nkind: Secret\nstringData: {auth_token: abc}\n", ".yaml"),
    ("environment:\n  POSTGRES_PASSWORD: hunter2hunter2\n", ".yaml"),
    ("uri: postgresql://mlflow:hunter2@db:5432/mlflow\n", ".yaml"),
    ("run_options: ['--env RAY_AUTH_TOKEN=abcdef123456']\n", ".yaml"),
    ('{"aws_secret_access_key": "abc123abc123"}', ".json"),
    ("[mlflow]\nadmin_password = hunter2hunter2\n", ".ini"),
    ("ENV MLFLOW_TRACKING_PASSWORD=hunter2hunter2\n", ""),
    ("key: AKIAIOSFODNN7EXAMPLE\n", ".yaml"),
])
def test_scanner_finds_planted_secrets(tmp_path, content, suffix):
    f = tmp_path / f"planted{suffix}"
    f.write_text(content)
    assert literal_secrets(f)


@pytest.mark.parametrize("content, suffix", [
    ("env:\n  - name: AWS_SECRET_ACCESS_KEY\n    valueFrom: {secretKeyRef: {name: s, key: k}}\n",
     ".yaml"),
    ("authOptions: {mode: token, secretName: dutrain-ray-auth}\n", ".yaml"),
    ("environment:\n  POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}\n", ".yaml"),
    ("x: postgresql://mlflow:${POSTGRES_PASSWORD}@postgres:5432/mlflow\n", ".yaml"),
    ("run_options: ['--env RAY_AUTH_TOKEN_PATH=/run/dutrain-secrets/ray_auth_token']\n", ".yaml"),
    ("POSTGRES_PASSWORD=\nAWS_DEFAULT_REGION=us-east-1\n", ""),
])
def test_scanner_accepts_references(tmp_path, content, suffix):
    f = tmp_path / f"clean{suffix}"
    f.write_text(content)
    assert literal_secrets(f) == []


@pytest.mark.parametrize("path", shipped_files("cluster", "infra"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_literal_secret_in_cluster_and_infra(path):
    assert literal_secrets(path) == []
