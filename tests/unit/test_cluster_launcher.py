"""cluster/launcher: the Ray cluster-launcher YAML validates against the schema inside the `ray`
package (ray/autoscaler/ray-schema.json) and through Ray's own config preparation, and keeps
token auth on, the dashboard on the head's loopback and credentials out of the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = sorted((ROOT / "cluster" / "launcher").glob("*.yaml"))
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_is_a_launcher_config():
    assert [p.name for p in LAUNCHER] == ["aws.yaml"]


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_validates_against_rays_schema(path):
    jsonschema.Draft7Validator(SCHEMA).validate(load(path))
    validate_config(prepare_config(load(path)))  # Ray's own checks after filling its defaults


def test_schema_check_rejects_bad_configs():
    cfg = load(LAUNCHER[0])
    typo = copy.deepcopy(cfg)
    typo["max_worker"] = 3
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["cpu"]["resources"] = {"CPU": -1}
    for broken in (typo, bad):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(SCHEMA).validate(broken)


def test_cpu_and_gpu_node_types_autoscale_with_instance_roles():
    cfg = load(LAUNCHER[0])
    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws"
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    for name in ("cpu", "gpu"):
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"]
    assert types["gpu"]["node_config"]["InstanceType"].startswith(("p", "g"))
    for t in types.values():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")


def test_token_auth_and_private_dashboard():
    cfg = load(LAUNCHER[0])
    opts = " ".join(cfg["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in opts and "RAY_AUTH_TOKEN_PATH=" in opts
    assert "RAY_AUTH_TOKEN=" not in opts
    (head_start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    rules = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    fetched = " ".join(cfg["initialization_commands"])
    assert "secretsmanager get-secret-value" in fetched and "chmod 600" in fetched
