"""`dutrain pipeline` end to end at CI size: every stage a child run (offline RL between sft and rl,
as `stages` can list it), rerun skips, no secret leaks.

One subprocess run of the real CLI (as `make demo` runs it, with smaller stage sizes), then a
rerun that must skip every stage. A planted secret in the environment must not appear in the
MLflow store, its artifacts or the job's output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "PLANTED-s3cr3t-9f8e7d6c5b4a"

# CI-sized: a few hundred rows, a handful of steps; stage YAMLs as in the demo.
SMALL = [
    "generate.samples=192", "generate.rows_per_shard=64", "generate.preview_pairs=4",
    "sft.max_steps=12", "sft.warmup_steps=2", "sft.num_workers=1", "sft.eval_every=6",
    "sft.checkpoint_every=6",
    "sft.val_samples=8", "sft.final_eval_samples=4", "sft.sample_completions=1",
    "offline.train_limit=4", "offline.samples_per_prompt=2", "offline.method=rft",
    "offline.rft_min_reward=0", "offline.max_steps=2", "offline.batch_size=2",
    "offline.val_samples=4", "offline.generation.workers=1", "offline.generation.max_tokens=64",
    "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.eval_prompts=2",
    "rl.eval_every=2", "rl.checkpoint_every=0", "rl.learner.workers=1", "rl.samples_to_log=2",
    "rl.mode=sync", "rl.rollout.max_tokens=64",
    "eval.limit=6", "eval.generation.max_tokens=64", "eval.calibration_samples=40",
    "restore.limit=3", "restore.generation.max_tokens=64", "restore.calibration_samples=40",
    "restore.restore.judge_rows=12",
]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "dutrain"), "pipeline", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_pipeline_end_to_end_rerun_and_secret_hygiene(tmp_path):
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_TOKEN": SECRET,
           "MLFLOW_TRACKING_PASSWORD": SECRET, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    db = tmp_path / "mlflow.db"
    args = ["--config", str(ROOT / "workflows/configs/pipeline/demo.yaml"),
            f"workdir={tmp_path / 'work'}", f"tracking.uri=sqlite:///{db}",
            "tracking.experiment=pipeline-test",
            *[f"stage_configs.{s}={ROOT / 'workflows/configs' / s / 'demo.yaml'}"
              for s in ("generate", "sft", "offline", "rl", "eval", "restore", "compare")],
            "stages=[generate,sft,offline,rl,eval,restore,compare]", *SMALL]
    first = _run(args, tmp_path, env)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-6000:]
    assert "MLflow UI" in first.stdout and "system" in first.stdout

    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("pipeline-test")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("dutrain.stage") == "pipeline"]
    assert len(parents) == 1
    pid = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    stages = sorted(r.data.tags["dutrain.stage"] for r in children)
    assert stages == ["compare", "eval", "eval", "eval", "generate", "offline", "restore", "rl",
                      "sft"]
    # rl started from the offline stage's model, not sft's
    rl_run = next(r for r in children if r.data.tags["dutrain.stage"] == "rl")
    assert rl_run.data.params["model"].endswith("offline/final"), rl_run.data.params["model"]
    for r in children:
        assert r.info.status == "FINISHED", r.data.tags
        assert r.data.params, f"{r.data.tags['dutrain.stage']}: no params"
        assert client.list_artifacts(r.info.run_id), f"{r.data.tags['dutrain.stage']}: no artifacts"
        if r.data.tags["dutrain.stage"] != "compare":
            assert r.data.metrics, f"{r.data.tags['dutrain.stage']}: no metrics"
    evals = {r.data.params.get("model") for r in children if r.data.tags["dutrain.stage"] == "eval"}
    assert {"baseline:prior", "baseline:classical"} <= evals
    metrics = json.loads((tmp_path / "work/eval/classical/metrics.json").read_text())
    assert "test/type_f1" in metrics and "ood/value_nmae" in metrics

    # A rerun skips every complete stage.
    second = _run(args, tmp_path, env)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert second.stdout.count("complete, skipped") == 9, second.stdout

    # A changed stage config reruns that stage and every later one from scratch: generate
    # replaces its finished dataset (it refuses to without overwrite), sft and rl do not resume
    # the previous run's checkpoints.
    third = _run(args + ["generate.samples=200", "rl.steps=1"], tmp_path, env)
    assert third.returncode == 0, (third.stdout + third.stderr)[-6000:]
    assert "complete, skipped" not in third.stdout, third.stdout
    card = json.loads((tmp_path / "work/data/dataset_card.json").read_text())
    assert card["counts"]["rows"] == 200
    latest = client.search_runs([exp.experiment_id], "tags.dutrain.stage = 'pipeline'",
                                order_by=["start_time DESC"])[0]
    kids = {r.data.tags["dutrain.stage"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{latest.info.run_id}'")}
    # trained from step 0 again (a resumed run would start at its last checkpoint, step 12)
    loss_steps = [m.step for m in client.get_metric_history(kids["sft"].info.run_id, "train/loss")]
    assert loss_steps == [12], loss_steps
    assert [m.step for m in client.get_metric_history(kids["rl"].info.run_id,
                                                      "reward/total")] == [1]
    # compare shows this run's evals, not the first run's too (same workdir, same names)
    with open(tmp_path / "work/compare/compare.csv") as f:
        compared = [r["run_id"] for r in csv.DictReader(f)]
    evals_now = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = "
                                   f"'{latest.info.run_id}' and tags.dutrain.stage = 'eval'")
    assert len(evals_now) == 3 and sorted(compared) == sorted(r.info.run_id for r in evals_now)

    # No trace of the planted secret anywhere we wrote.
    assert SECRET not in out and SECRET not in second.stdout + second.stderr + third.stdout
    for path in [db, *tmp_path.rglob("*")]:
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), f"secret leaked into {path}"
