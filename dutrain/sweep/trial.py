"""One sweep trial, as a Ray Tune function trainable: the base verb's own runner, in-process.

The trial makes its MLflow child run first (parent: the sweep's run; params: the space's
choices), so a trial that fails before its stage logs anything is still a FAILED child with its
error. The stage's own `stage_run` then logs into that run (`RUN_ENV`). With early stopping on,
the stage runs in a thread while the trial reads the sweep metric from the run's history and
reports each new value to Tune, whose ASHA scheduler may stop the trial.

Each trial keeps a record, `trials/<name>/trial.json` (status, MLflow run id, metrics): a rerun
of the sweep skips the trials whose record says finished or stopped.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dutrain.config import VERBS, load_config
from dutrain.config.secrets import scrub
from dutrain.tracking.mlflow_run import PARENT_ENV, RUN_ENV, Tracker

from .space import Trial

RECORD = "trial.json"
#: record statuses a rerun does not run again
DONE = ("finished", "stopped")
_MAX_TAG = 4000


@dataclass
class TrialContext:
    """What every trial needs from the driver (pickled into the Tune trainable)."""

    verb: str
    cwd: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_id: str
    root: str  # the sweep's trials/ folder
    metric: str | None = None
    early_stop: bool = False
    poll_seconds: float = 2.0
    trials: dict[str, Trial] = field(default_factory=dict)


def record_path(root: str | Path, name: str) -> Path:
    return Path(root) / name / RECORD


def read_record(root: str | Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(record_path(root, name).read_text())
    except (OSError, ValueError):
        return {}


def write_record(root: str | Path, name: str, **data: Any) -> None:
    p = record_path(root, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({**read_record(root, name), **data,
                               "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2,
                              default=str))
    os.replace(tmp, p)


def record_failure(client: Any, run_id: str, error: str, detail: str) -> None:
    """The run ends FAILED with its error as tag `dutrain.error` and artifact error.txt."""
    tracker = Tracker(client, run_id)
    try:
        tracker.set_tags({"dutrain.error": scrub(error)[:_MAX_TAG]})
        tracker.log_text(detail, "error.txt")
    finally:
        client.set_terminated(run_id, status="FAILED")


def _child_metrics(client: Any, run_id: str) -> dict[str, float]:
    """A pipeline trial's stage metrics, named `<stage>/<metric>` (eval: `eval-<label>/...`)."""
    exp = client.get_run(run_id).info.experiment_id
    out: dict[str, float] = {}
    for child in client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                    max_results=200):
        stage = child.data.tags.get("dutrain.stage", "stage")
        if stage == "eval":
            stage = "eval-" + Path(child.data.params.get("output", "model")).name
        out.update({f"{stage}/{k}": v for k, v in child.data.metrics.items()})
    return out


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: `config["trial"]` names one of `ctx.trials`."""
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
    from ray import tune

    trial = ctx.trials[config["trial"]]
    os.chdir(ctx.cwd)  # the stage's relative paths mean what they mean to the sweep's user
    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    run = client.create_run(ctx.experiment_id, run_name=trial.name, tags={
        MLFLOW_PARENT_RUN_ID: ctx.parent_run_id, "dutrain.stage": ctx.verb,
        "dutrain.sweep": ctx.sweep_id, "dutrain.trial": trial.key})
    run_id = run.info.run_id
    write_record(ctx.root, trial.name, status="running", run_id=run_id, key=trial.key,
                 overrides=trial.overrides, error=None)
    Tracker(client, run_id).log_params(trial.overrides)
    outcome: dict[str, Any] = {}

    def stage() -> None:
        try:
            cfg = load_config(VERBS[ctx.verb].config_class(), overrides=trial.config,
                              verb=ctx.verb)
            os.environ[RUN_ENV] = run_id
            os.environ[PARENT_ENV] = run_id  # a pipeline's stage runs are the trial's children
            outcome["code"] = int(VERBS[ctx.verb].run_fn()(cfg) or 0)
        except BaseException as exc:  # noqa: BLE001 - recorded, then raised in the trial
            outcome["error"] = exc
            outcome["detail"] = traceback.format_exc()
        finally:
            os.environ.pop(RUN_ENV, None)
            os.environ.pop(PARENT_ENV, None)

    reported = -1
    if ctx.early_stop and ctx.metric:
        worker = threading.Thread(target=stage, name=f"trial-{trial.name}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(ctx.poll_seconds)
            for m in sorted(client.get_metric_history(run_id, ctx.metric), key=lambda m: m.step):
                if m.step > reported:
                    reported = m.step
                    tune.report({ctx.metric: m.value, "stage_step": m.step})
    else:
        stage()

    error = outcome.get("error")
    if error is None and outcome.get("code", 0) != 0:
        error = RuntimeError(f"dutrain {ctx.verb} exited with code {outcome['code']}")
        outcome["detail"] = str(error)
    if error is not None:
        text = f"{type(error).__name__}: {error}".strip()
        record_failure(client, run_id, text, outcome.get("detail", text))
        write_record(ctx.root, trial.name, status="failed", error=scrub(text)[:_MAX_TAG])
        raise RuntimeError(f"trial {trial.name} failed: {text}") from None
    metrics = dict(client.get_run(run_id).data.metrics)
    if ctx.verb == "pipeline":
        children = _child_metrics(client, run_id)
        Tracker(client, run_id).log_metrics(children)
        metrics.update(children)
    client.set_terminated(run_id, status="FINISHED")
    write_record(ctx.root, trial.name, status="finished", metrics=metrics)
    tune.report({**metrics, "stage_step": reported + 1, "trial_finished": 1})
