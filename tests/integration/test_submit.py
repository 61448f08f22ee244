"""`dutrain submit` against a real Ray head started here: 127.0.0.1 only, token auth on.

The head runs in its own session with its own HOME, temp dir and ports, so it neither reads nor
writes ~/.ray/auth_token and never meets another Ray cluster on this machine; teardown ends
exactly the processes of that session (never a global `ray stop`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import BIN, ROOT, free_port

TOKEN = secrets.token_hex(16)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def end_session(sid: int) -> None:
    """End every process of session `sid` (the head and the workers it started)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while _session_pids(sid) and time.time() < deadline:
            time.sleep(0.2)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") or k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                "RAY_USAGE_STATS_ENABLED")}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}:{env.get('PATH', '')}")  # the job's `dutrain` is this venv's
    return env


def start_head(d: Path, token: str) -> tuple[subprocess.Popen, str]:
    """`ray start --head` in its own session under `d` (HOME, temp dir); returns (proc, job URL).

    The returned process is the session leader: `end_session(proc.pid)` stops the whole head.
    """
    (d / "home").mkdir(exist_ok=True)
    env = _base_env(d / "home") | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    dash = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2",
           "--include-dashboard=true", f"--temp-dir={d / 'ray'}", "--disable-usage-stats"]
    with open(d / "start.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        rc = proc.wait(120)
    if rc != 0:
        end_session(proc.pid)
        raise RuntimeError((d / "start.log").read_text()[-3000:])
    return proc, f"http://127.0.0.1:{dash}"


@pytest.fixture(scope="module")
def ray_head():
    """A token-auth Ray head on 127.0.0.1 (2 CPUs); yields its job-server URL and dirs."""
    # a short path: Ray's unix socket names must stay under 107 characters
    d = Path(tempfile.mkdtemp(prefix="dtsub", dir="/tmp"))
    try:
        proc, url = start_head(d, TOKEN)
        try:
            yield {"url": url, "dir": d}
        finally:
            end_session(proc.pid)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def dutrain_submit(args: list[str], env: dict[str, str], timeout: float = 180
                   ) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dutrain"), "submit", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def client_env(tmp_path) -> dict[str, str]:
    """The submitting user's environment: the token in RAY_AUTH_TOKEN, an empty HOME."""
    (tmp_path / "home").mkdir()
    return _base_env(tmp_path / "home") | {"RAY_AUTH_TOKEN": TOKEN}


def _authorized_client(url: str):
    from ray.job_submission import JobSubmissionClient
    return JobSubmissionClient(url, headers={"Authorization": f"Bearer {TOKEN}"})


def _wait_status(client, job_id: str, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(job_id))
        if status in wanted:
            return status
        time.sleep(0.2)
    raise TimeoutError(f"{job_id} did not reach {wanted}: {client.get_job_status(job_id)}")


def test_requests_without_the_right_token_are_refused(ray_head, client_env):
    before = len(_authorized_client(ray_head["url"]).list_jobs())
    no_token = {k: v for k, v in client_env.items() if k != "RAY_AUTH_TOKEN"}
    r = dutrain_submit(["--list", "--address", ray_head["url"]], no_token)
    assert r.returncode == 4, r.stderr
    assert "AuthenticationError" in r.stderr and "Missing authentication token" in r.stderr
    r = dutrain_submit(["generate", "--address", ray_head["url"], "samples=4"], no_token)
    assert r.returncode == 4 and "Missing authentication token" in r.stderr, r.stderr
    wrong = client_env | {"RAY_AUTH_TOKEN": "not-the-token-0000"}
    r = dutrain_submit(["--status", "raysubmit_x", "--address", ray_head["url"]], wrong)
    assert r.returncode == 4, r.stderr
    assert "Invalid authentication token" in r.stderr and "not-the-token" not in r.stderr
    assert len(_authorized_client(ray_head["url"]).list_jobs()) == before


def test_status_logs_and_stop_of_a_running_job(ray_head, client_env):
    client = _authorized_client(ray_head["url"])
    job_id = client.submit_job(entrypoint="echo started; sleep 300")
    _wait_status(client, job_id, {"RUNNING"})
    env = client_env | {"RAY_ADDRESS": ray_head["url"]}  # the address from the environment

    r = dutrain_submit(["--status", job_id], env)
    assert r.returncode == 0, r.stderr
    assert f"submission_id: {job_id}" in r.stdout and "status:        RUNNING" in r.stdout

    r = dutrain_submit(["--stop", job_id, "--wait", "60"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "STOPPED"
    assert str(client.get_job_status(job_id)) == "STOPPED"

    r = dutrain_submit(["--logs", job_id], env)
    assert r.returncode == 0 and "started" in r.stdout
    r = dutrain_submit(["--list"], env)
    assert job_id in r.stdout and "STOPPED" in r.stdout

    r = dutrain_submit(["--status", "raysubmit_does_not_exist"], env)
    assert r.returncode == 4 and "does not exist" in r.stderr


def test_submit_generate_follow_succeeds_and_writes_the_dataset(ray_head, client_env, tmp_path):
    from dutrain.io.dataset import read_table
    out = tmp_path / "dataset"
    cfg = tmp_path / "tiny-generate.yaml"  # outside the project: shipped inside the working dir
    cfg.write_text("samples: 16\nimage_size: 32\nvariants_per_crop: 2\nrows_per_shard: 8\n"
                   "preview_pairs: 2\nprogress: false\ntracking:\n  enabled: false\n")
    r = dutrain_submit(["generate", "--address", ray_head["url"], "--config", str(cfg),
                        f"output={out}", "--follow"], client_env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id} ended: SUCCEEDED" in r.stderr
    assert f"entrypoint: dutrain generate --config _submit/{cfg.name} output={out} " \
           f"ray.address=auto" in r.stderr
    assert read_table(str(out), columns=["sample_id"]).num_rows == 16
    assert (out / "dataset_card.json").is_file()

    info = _authorized_client(ray_head["url"]).get_job_info(job_id)
    assert info.metadata["dutrain.verb"] == "generate" and "entrypoint_num_cpus=1" in r.stderr
    assert set(info.runtime_env["env_vars"]) == {"PYTHONUNBUFFERED"}
    assert TOKEN not in r.stdout + r.stderr + str(info)


def test_bad_verb_config_fails_before_upload(ray_head, client_env):
    r = dutrain_submit(["generate", "--address", ray_head["url"], "sampels=3"], client_env)
    assert r.returncode == 2
    assert "unknown key 'sampels' for 'generate' (did you mean 'samples'?)" in r.stderr
    assert "entrypoint:" not in r.stderr


def test_submit_sweep_runs_its_trials_on_the_cluster_and_tracks_them(ray_head, client_env,
                                                                      tmp_path, mlflow_server):
    """`dutrain submit sweep`: the sweep's driver is the job, its Tune trials run on the head's
    cluster, the MLflow tree (parent + a child per trial) and the results land as locally."""
    from mlflow import MlflowClient

    data, exp = tmp_path / "data", f"submit-sweep-{secrets.token_hex(4)}"
    gen = tmp_path / "gen.yaml"
    gen.write_text("samples: 96\nimage_size: 32\nvariants_per_crop: 2\nrows_per_shard: 48\n"
                   "ood_fraction: 0\npreview_pairs: 0\nprogress: false\ntracking:\n"
                   "  enabled: false\n")
    r = dutrain_submit(["generate", "--address", ray_head["url"], "--config", str(gen),
                        f"output={data}", "--follow"], client_env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    MlflowClient(mlflow_server).create_experiment(exp)
    sweep = tmp_path / "sweep.yaml"  # relative `base`: the shipped checkout's own file
    sweep.write_text(f"verb: eval\nbase: workflows/configs/eval/baseline_prior.yaml\n"
                     f"overrides:\n  dataset: {data}\n  splits: [train]\n  plots: false\n"
                     f"space:\n  limit: {{grid: [4, 8]}}\nmetric: train/type_exact\n"
                     f"max_concurrent: 1\ncpus_per_trial: 0.5\n")
    out = tmp_path / "out"
    r = dutrain_submit(["sweep", "--address", ray_head["url"], "--config", str(sweep),
                        f"output={out}", f"tracking.uri={mlflow_server}",
                        f"tracking.experiment={exp}", "--follow"], client_env, timeout=480)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ended: SUCCEEDED" in r.stderr  # the job's own output is followed on stdout
    assert "2 finished, 0 stopped early, 0 failed" in r.stdout
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    [parent] = [x for x in runs if x.data.tags.get("dutrain.stage") == "sweep"]
    kids = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(k.data.params["limit"] for k in kids) == ["4", "8"]
    assert all(k.info.status == "FINISHED" and "train/type_exact" in k.data.metrics
               for k in kids)
    assert (out / "sweep.md").is_file() and parent.data.metrics["sweep/finished"] == 2
    assert TOKEN not in r.stdout + r.stderr
