"""`dutrain rl` end to end on local Ray with the tiny model and real vLLM CPU engines.

Toy task: reward 1 when a completion names `haze` (an untrained model does so by chance in a few
% of samples). Checked: the policy moves within a few steps (sync, through the real entry point
with MLflow); async one-step-off (learner and rollout actor colocated) gives the same learning
signal with staleness within its bound; resuming from a checkpoint reproduces the uninterrupted
run's next steps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_eval_data import write_dataset

from dutrain.config import load_config
from dutrain.config.rl import RLConfig

STEPS = 6
TOY = ["reward.kind=type_mention", "reward.target_type=haze", f"steps={STEPS}",
       "prompts_per_step=8", "group_size=8", "rollout.max_tokens=16", "learner.lr=5e-3",
       "learner.cpus_per_worker=0.5", "learner.workers=2", "rollout.workers=1",
       "checkpoint_every=4", "eval_every=3", "eval_prompts=4", "samples_to_log=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(write_dataset(tmp_path_factory.mktemp("rl-learn") / "ds",
                             {"train": 48, "val": 8}, size=96))


def _metrics(uri: str) -> tuple[dict[str, list[float]], object, str]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dutrain-rl-test")
    run = client.search_runs([exp.experiment_id], order_by=["start_time DESC"])[0]
    hist = {}
    for key in run.data.metrics:
        ms = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        hist[key] = [m.value for m in ms]
    return hist, client, run.info.run_id


@pytest.fixture(scope="module")
def sync_run(ray_local, dataset, tmp_path_factory):
    from dutrain.rl.controller import run

    tmp = tmp_path_factory.mktemp("rl-sync")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(RLConfig, overrides=TOY + [
        f"dataset={dataset}", f"output={tmp / 'out'}", f"tracking.uri={uri}",
        "tracking.experiment=dutrain-rl-test"])
    assert run(cfg) == 0
    hist, client, run_id = _metrics(uri)
    return cfg, hist, client, run_id


def _gain(rewards: list[float]) -> float:
    return float(np.mean(rewards[-2:]) - rewards[0])


def test_sync_toy_reward_moves_the_policy_and_is_tracked(sync_run):
    cfg, hist, client, run_id = sync_run
    r = hist["reward/total"]
    assert len(r) == STEPS
    print(f"sync toy reward per step: {np.round(r, 3).tolist()}")
    assert _gain(r) >= 0.15, r
    assert hist["rl/entropy"][-1] < hist["rl/entropy"][0]
    for key in ("rl/sync_seconds", "rl/rollout_tokens_per_s", "rl/learner_seconds",
                "rl/completion_length", "rl/format_valid", "rl/staleness", "rl/step_seconds",
                "val/reward/total", "val/format_valid"):
        assert key in hist, key
    assert hist["rl/staleness"] == [0.0] * STEPS
    assert len(hist["val/reward/total"]) == 3  # before training, after steps 3 and 6
    arts = [a.path for a in client.list_artifacts(run_id, "samples")]
    assert f"samples/step_{STEPS - 1:06d}.jsonl" in arts
    out = Path(cfg.output)
    assert (out / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000004",
                                                                       "step_000006"]


def test_async_gives_the_same_signal_with_bounded_staleness(ray_local, dataset, sync_run,
                                                           tmp_path):
    from dutrain.rl.controller import Controller, prepare

    # also the colocated placement: learner and rollout actor share one bundle (2 CPUs)
    cfg = load_config(RLConfig, overrides=TOY + [
        f"dataset={dataset}", f"output={tmp_path / 'out'}", "mode=async", "max_staleness=1",
        "placement=colocated", "learner.workers=1", "learner.cpus_per_worker=1",
        "eval_every=0", "checkpoint_every=0", "tracking.enabled=false"])
    ctl = Controller(cfg, prepare(cfg))
    try:
        ctl.start()
        hist = ctl.fit()
    finally:
        ctl.shutdown()
    staleness = [m["rl/staleness"] for m in hist]
    assert staleness == [0.0] + [1.0] * (STEPS - 1)  # step 0 waits for nothing older
    r_async = [m["reward/total"] for m in hist]
    r_sync = sync_run[1]["reward/total"]
    print(f"async toy reward per step: {np.round(r_async, 3).tolist()}")
    assert _gain(r_async) >= 0.5 * _gain(r_sync) and _gain(r_async) >= 0.1, (r_async, r_sync)


def _resume_from_step_4(dataset: str, out: str, *extra: str) -> tuple[list[dict], str]:
    """Resume the toy run from the checkpoint of step 4 already at `out`; (history, final)."""
    from dutrain.rl.controller import Controller, prepare

    cfg = load_config(RLConfig, overrides=TOY + [
        f"dataset={dataset}", f"output={out}", "resume=true", "eval_every=0",
        "tracking.enabled=false", *extra])
    inputs = prepare(cfg)
    assert inputs.resume_state["step"] == 4
    ctl = Controller(cfg, inputs)
    try:
        ctl.start()
        return ctl.fit(), ctl.save_final()
    finally:
        ctl.shutdown()


def test_resume_reproduces_the_next_steps(ray_local, sync_run, tmp_path):
    cfg0, hist0 = sync_run[0], sync_run[1]
    out = tmp_path / "resumed"
    shutil.copytree(Path(cfg0.output) / "checkpoints" / "step_000004",
                    out / "checkpoints" / "step_000004")
    hist, _ = _resume_from_step_4(cfg0.dataset, str(out))
    assert len(hist) == STEPS - 4
    for i, m in enumerate(hist):
        step = 4 + i
        assert m["reward/total"] == pytest.approx(hist0["reward/total"][step], abs=1e-6)
        assert m["rl/completion_length"] == pytest.approx(hist0["rl/completion_length"][step])
        assert m["rl/entropy"] == pytest.approx(hist0["rl/entropy"][step], rel=1e-4)
        assert m["rl/loss"] == pytest.approx(hist0["rl/loss"][step], rel=1e-3, abs=1e-6)


def test_checkpoints_on_s3_resume_the_run(ray_local, sync_run, s3_env):
    """The same resume, with `output` on S3 (moto on loopback): learners write the weights there
    and the controller its state; the resumed steps match the uninterrupted run."""
    import s3fs

    cfg0, hist0 = sync_run[0], sync_run[1]
    out = f"s3://{s3_env['bucket']}/rl"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env["endpoint"]})
    fs.put(str(Path(cfg0.output) / "checkpoints" / "step_000004"),
           f"{out}/checkpoints/step_000004".removeprefix("s3://"), recursive=True)
    hist, final = _resume_from_step_4(cfg0.dataset, out, "checkpoint_every=1")
    assert [m["reward/total"] for m in hist] == pytest.approx(hist0["reward/total"][4:], abs=1e-6)
    fs.invalidate_cache()
    assert fs.exists(f"{out}/checkpoints/step_000006".removeprefix("s3://"))
    assert fs.exists(f"{final}/model.safetensors".removeprefix("s3://")), fs.ls(final)
