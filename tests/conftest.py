"""Shared fixtures: real services on 127.0.0.1 only (Ray, MLflow server, moto's S3 server).

Services are session-scoped because each costs seconds to start on 2 cores; tests isolate
themselves by experiment name, bucket name and output directory instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from dutrain.runtime.vllm_env import VLLM_ENV

# Keep every Ray process on loopback and quiet (docs/environment.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", VLLM_ENV["VLLM_CPU_KVCACHE_SPACE"])

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster with 2 CPUs on 127.0.0.1, shared by the session."""
    import ray
    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="dutrain-tests",
             log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


#: MLflow 3's server starts a job runner with seven Huey consumer processes, each importing
#: MLflow, for GenAI jobs dutrain never submits: off, the server starts in a fraction of the time
NO_MLFLOW_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend in /dev/shm where there is one:
    creating the store fsyncs once per migration, minutes on a disk busy with other jobs; local
    artifacts)."""
    d = tmp_path_factory.mktemp("mlflow")
    shm = Path("/dev/shm")
    db = Path(tempfile.mkdtemp(prefix="dutrain-mlflow-", dir=shm)) if shm.is_dir() and \
        os.access(shm, os.W_OK) else d
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db / 'mlflow.db'}",
         "--default-artifact-root", str(d / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env=os.environ | NO_MLFLOW_JOBS)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", 120, proc)
        yield uri
    finally:
        _stop(proc)
        if db != d:
            shutil.rmtree(db, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (as s3fs's own test suite does); yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{endpoint}/moto-api/", 30, proc)
        yield endpoint
    finally:
        _stop(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment pointing boto3/s3fs/pyarrow at the moto server, plus a fresh bucket name."""
    import uuid

    import boto3
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"dutrain-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return {"endpoint": s3_server, "bucket": bucket}


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available."""
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


def which(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else (shutil.which(name) or name)


# ---------------------------------------------------------------------- the CI-sized demo run
# One `dutrain generate` + `dutrain sft` with the demo YAMLs, scaled down (fewer rows and steps),
# built once per session: minutes of 2-core CPU that the SFT and RL learning tests both need.

# CI size: the demo's 128-px single-degradation data with a seventh of the rows, from the
# built-in photos + dead leaves (the floors of test_sft_demo were measured on them; the demo
# itself adds the packaged `photos`, which test_generate_photos covers), 400 steps of batch 8
# per worker (the demo: 40,000 rows, 2,500 steps of 16).
DEMO_SFT_OVERRIDES = ["max_steps=400", "warmup_steps=20", "batch_size=8", "eval_every=400",
                      "checkpoint_every=400", "final_eval_samples=0", "val_samples=16",
                      "progress=false"]
DEMO_GENERATE_OVERRIDES = ["samples=5800", "ood_fraction=0", "sources=[builtin,dead_leaves:24]"]


@dataclass(frozen=True)
class DemoRun:
    data: Path
    model: Path  # the SFT stage's final/ (an ordinary HF checkpoint)
    cfg: object  # the SFTConfig it was trained with


@pytest.fixture(scope="session")
def demo_sft(ray_local, tmp_path_factory, project_root) -> DemoRun:
    from dutrain.config import load_config
    from dutrain.config.generate import GenerateConfig
    from dutrain.config.sft import SFTConfig
    from dutrain.data.generate import generate
    from dutrain.sft.run import run

    root = tmp_path_factory.mktemp("demo")
    data = root / "data"
    generate(load_config(GenerateConfig, project_root / "workflows/configs/generate/demo.yaml",
                         overrides=[f"output={data}", "progress=false", "tracking.enabled=false",
                                    *DEMO_GENERATE_OVERRIDES]))
    cfg = load_config(SFTConfig, project_root / "workflows/configs/sft/demo.yaml", overrides=[
        f"dataset={data}", f"output={root / 'sft'}", "tracking.enabled=false",
        *DEMO_SFT_OVERRIDES])
    assert run(cfg) == 0
    return DemoRun(data=data, model=root / "sft" / "final", cfg=cfg)
