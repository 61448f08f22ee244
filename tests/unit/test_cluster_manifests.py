"""cluster/kuberay: every RayCluster/RayJob validates against KubeRay's CRD schema, strictly
(unknown fields rejected, as the API server's pruning would silently drop them), and the
manifests keep the promises of docs/cluster.md: token auth, no public dashboard, autoscaling
CPU and GPU groups, one RayJob per stage, credentials only by reference.

The CRDs are vendored in tests/data/kuberay/ (KubeRay v1.7.0, unchanged; source and license in
its README.md), so the schema checks always run.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from dutrain.config import VERBS, ConfigError, load_config
from dutrain.config.secrets import SECRET_ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
CRD_DIR = ROOT / "tests" / "data" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
STAGES = ("generate", "sft", "rl", "eval", "restore")
IMAGE_HOME = "/home/ray/dutrain/"  # where cluster/Dockerfile puts the checkout


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(KUBERAY.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return out


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {where: doc for where, doc in manifests() if doc["kind"] == kind}


def strict(schema: Any) -> Any:
    """The schema with unknown object fields rejected wherever it lists the known ones."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


_validators: dict[tuple[str, str], jsonschema.Validator] = {}


def validator(kind: str, api_version: str) -> jsonschema.Validator:
    version = api_version.split("/")[-1]
    if (kind, version) not in _validators:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-2 MB of YAML
        crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
        schemas = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
        assert version in schemas, f"{kind} {api_version}: the CRD serves {list(schemas)}"
        _validators[kind, version] = jsonschema.Draft7Validator(strict(schemas[version]))
    return _validators[kind, version]


def schema_errors(doc: dict[str, Any]) -> list[str]:
    v = validator(doc["kind"], doc["apiVersion"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


@pytest.mark.parametrize("where", [w for w, d in manifests() if d["kind"] in CRD_FILES])
def test_kuberay_manifest_validates_against_the_crd(where):
    doc = dict(manifests())[where]
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(doc) == []


def test_schema_check_rejects_typos_and_bad_types():
    (_, cluster), = of_kind("RayCluster").items()
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e for e in schema_errors(typo))
    bad = copy.deepcopy(cluster)
    bad["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions.mode" in e for e in schema_errors(bad))
    nameless = copy.deepcopy(cluster)
    del nameless["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in e for e in schema_errors(nameless))


def _cluster_specs() -> list[dict[str, Any]]:
    specs = [d["spec"] for d in of_kind("RayCluster").values()]
    specs += [d["spec"]["rayClusterSpec"] for d in of_kind("RayJob").values()
              if "rayClusterSpec" in d["spec"]]
    return specs


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_cluster_has_token_auth_and_a_private_dashboard():
    assert _cluster_specs()
    for spec in _cluster_specs():
        assert spec["authOptions"]["mode"] == "token"
        assert spec["authOptions"]["secretName"]
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress", False)
    kinds = {d["kind"] for _, d in manifests()}
    assert not kinds & {"Ingress", "Route", "Gateway"}, kinds
    for where, doc in of_kind("Service").items():
        assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", where


def test_cpu_group_and_gpu_group_autoscale():
    for spec in _cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpus = {name: g["template"]["spec"]["containers"][0]["resources"]["limits"]
                .get("nvidia.com/gpu") for name, g in groups.items()}
        assert gpus == {"cpu": None, "gpu": "8"}
        for g in groups.values():
            assert g["minReplicas"] == 0 < g["maxReplicas"], g["groupName"]
        # the head runs no tasks, so work lands on the groups that scale
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_secrets_come_only_from_secret_refs():
    for spec in _cluster_specs():
        for c in _containers(spec):
            for env in c.get("env", []):
                if env["name"] in SECRET_ENV_VARS:
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    assert not of_kind("Secret")


def test_rayversion_matches_the_ray_we_pin_and_the_image():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM rayproject/ray:([0-9.]+)-", dockerfile, re.M)
    assert {s["rayVersion"] for s in _cluster_specs()} == {ray.__version__} == {base}


def test_pipeline_job_runs_on_the_same_cluster_spec():
    cluster = next(iter(of_kind("RayCluster").values()))
    pipeline = [d for d in of_kind("RayJob").values()
                if d["metadata"]["name"] == "dutrain-pipeline"]
    assert len(pipeline) == 1
    assert pipeline[0]["spec"]["rayClusterSpec"] == cluster["spec"]
    assert pipeline[0]["spec"]["shutdownAfterJobFinishes"] is True


def _entrypoint(doc: dict[str, Any]) -> list[str]:
    return shlex.split(doc["spec"]["entrypoint"])


def test_one_rayjob_per_stage_and_for_the_pipeline():
    jobs = of_kind("RayJob").values()
    verbs = sorted(_entrypoint(d)[1] for d in jobs)
    assert verbs == sorted([*STAGES, "pipeline"])
    cluster_name = next(iter(of_kind("RayCluster").values()))["metadata"]["name"]
    for doc in jobs:
        argv = _entrypoint(doc)
        assert argv[0] == "dutrain" and "ray.address=auto" in argv, argv
        assert ("clusterSelector" in doc["spec"]) != ("rayClusterSpec" in doc["spec"])
        if "clusterSelector" in doc["spec"]:
            assert doc["spec"]["clusterSelector"] == {"ray.io/cluster": cluster_name}
            assert not doc["spec"].get("shutdownAfterJobFinishes", False)
        # drivers reserve no GPU: Ray Train and the RL/eval worker groups reserve their own
        assert "entrypointNumGpus" not in doc["spec"]
        assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
    generate = [d for d in jobs if _entrypoint(d)[1] == "generate"][0]
    assert generate["spec"]["entrypointNumCpus"] == 1


def _job_config(argv: list[str]) -> tuple[str, Path | None, list[str]]:
    verb, config, overrides = argv[1], None, []
    it = iter(argv[2:])
    for a in it:
        if a == "--config":
            config = ROOT / next(it).removeprefix(IMAGE_HOME)
        else:
            overrides.append(a)
    return verb, config, overrides


@pytest.mark.parametrize("name", sorted(d["metadata"]["name"] for d in of_kind("RayJob").values()))
def test_rayjob_entrypoint_is_a_valid_dutrain_command(name):
    doc = [d for d in of_kind("RayJob").values() if d["metadata"]["name"] == name][0]
    verb, config, overrides = _job_config(_entrypoint(doc))
    if config is not None:
        assert str(config).startswith(str(ROOT / "workflows" / "configs" / verb))
    if verb not in VERBS:
        pytest.skip(f"'dutrain {verb}' is not registered yet")
    if config is not None and not config.is_file():
        pytest.skip(f"{config.relative_to(ROOT)} does not exist yet")
    try:
        load_config(VERBS[verb].config_class(), config, overrides, verb=verb)
    except ConfigError as exc:
        pytest.fail(f"{name}: {exc}")
