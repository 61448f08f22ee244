"""infra/: the tracking server a team deploys. Every file parses, the server is configured the
same way everywhere (infra/mlflow/serve.sh: compose, Kubernetes and `make tracking-server`),
authentication is on where it faces a team, storage is PostgreSQL + S3, nothing is exposed
publicly by default, and the IAM policies cover exactly the bucket layout the manifests use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_cluster_secrets import literal_secrets, shipped_files

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
LAYOUT = {"clean", "datasets", "checkpoints", "eval", "restore", "mlflow"}  # infra/README.md


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", shipped_files("infra"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_infra_file_parses_and_holds_no_secret(path):
    if path.suffix in (".yaml", ".yml"):
        assert yaml_docs(path)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".sh":
        subprocess.run([shutil.which("sh") or "/bin/sh", "-n", str(path)], check=True)
    elif path.name == "Dockerfile":
        assert re.search(r"^FROM \S+", path.read_text(), re.M)
    assert literal_secrets(path) == []


def test_env_example_names_secrets_without_values():
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            if re.search(r"PASSWORD|SECRET", name):
                assert value == "", name
    assert (INFRA / ".gitignore").read_text().split() == [".env"]


def test_compose_runs_postgres_mlflow_with_auth_and_s3_on_loopback():
    compose = yaml_docs(INFRA / "compose.yaml")[0]
    services = compose["services"]
    assert {"postgres", "mlflow"} <= set(services)
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql://")
    assert env["MLFLOW_AUTH"] == "basic"
    assert "s3://" in env["MLFLOW_ARTIFACTS_DESTINATION"]
    assert services["mlflow"]["ports"] == ["${MLFLOW_PUBLISH:-127.0.0.1:5000}:5000"]
    for name, svc in services.items():  # nothing binds every interface of the host
        for port in svc.get("ports", []):
            assert "127.0.0.1:" in port, (name, port)
    assert "mlflow-serve" in (INFRA / "mlflow" / "Dockerfile").read_text()


def test_kubernetes_mlflow_uses_secret_refs_and_stays_inside_the_cluster():
    docs = {d["kind"]: d for d in yaml_docs(INFRA / "k8s" / "mlflow.yaml")}
    assert set(docs) == {"ServiceAccount", "Deployment", "Service", "NetworkPolicy"}
    assert docs["Service"]["spec"]["type"] == "ClusterIP"
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_AUTH"]["value"] == "basic"
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI",
                 "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    sa = docs["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert sa.endswith(":role/dutrain-mlflow")
    # the Ray pods reach MLflow under the name the cluster's ConfigMap gives them
    namespace = yaml_docs(ROOT / "cluster" / "kuberay" / "namespace.yaml")
    uri = [d for d in namespace if d["kind"] == "ConfigMap"][0]["data"]["MLFLOW_TRACKING_URI"]
    assert uri == "http://mlflow.dutrain.svc.cluster.local:5000"
    assert "mlflow.dutrain.svc.cluster.local:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"]


def test_make_tracking_server_is_the_same_server_on_loopback():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntracking-server:", 1)[1].split("\n\n", 1)[0]
    assert "infra/mlflow/serve.sh" in recipe
    assert "MLFLOW_HOST=127.0.0.1" in recipe and "sqlite:///mlflow.db" in recipe


def test_serve_sh_refuses_missing_settings(tmp_path):
    serve = INFRA / "mlflow" / "serve.sh"
    r = subprocess.run([str(serve)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode != 0 and "MLFLOW_BACKEND_STORE_URI" in r.stderr
    r = subprocess.run([str(serve)], capture_output=True, text=True, cwd=tmp_path, env={
        "PATH": "/usr/bin:/bin", "MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db",
        "MLFLOW_ARTIFACTS_DESTINATION": "./a", "MLFLOW_AUTH": "basic"})
    assert r.returncode != 0 and "MLFLOW_FLASK_SERVER_SECRET_KEY" in r.stderr
    # with everything set, the server command is exactly what mlflow receives
    r = subprocess.run([str(serve)], capture_output=True, text=True, cwd=tmp_path, env={
        "PATH": "/usr/bin:/bin", "MLFLOW_BIN": "echo", "MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db",
        "MLFLOW_ARTIFACTS_DESTINATION": "./a"})
    assert r.stdout.split() == ["server", "--backend-store-uri", "sqlite:///x.db",
                                "--artifacts-destination", "./a", "--serve-artifacts", "--host",
                                "127.0.0.1", "--port", "5000", "--workers", "2"]


def _prefixes(text: str) -> set[str]:
    return set(re.findall(r"s3://(?:\$DUTRAIN_BUCKET|your-dutrain-bucket)/([a-z0-9_-]+)", text))


def _policy_prefixes(name: str) -> set[str]:
    policy = json.loads((INFRA / "aws" / name).read_text())
    resources = [r for s in policy["Statement"] for r in
                 ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    return set(re.findall(r"arn:aws:s3:::your-dutrain-bucket/([a-z0-9_-]+)/\*",
                          " ".join(resources)))


def test_iam_policies_cover_the_bucket_layout_the_manifests_use():
    ray_prefixes, mlflow_prefixes = (_policy_prefixes("iam-dutrain-ray.json"),
                                     _policy_prefixes("iam-dutrain-mlflow.json"))
    assert ray_prefixes | mlflow_prefixes == LAYOUT and not ray_prefixes & mlflow_prefixes
    used = set().union(*(_prefixes(p.read_text()) for p in shipped_files("cluster", "infra")))
    assert used - {"mlflow"} <= ray_prefixes and "mlflow" in used
    readme = (INFRA / "README.md").read_text()
    assert all(f"{p}/" in readme for p in LAYOUT)
