"""The MLflow UI links a tracked stage prints open on the runs view: the MLflow 3.17 UI takes an
experiment's view from its GenAI / Model training switch (GenAI for a new user), which the
`workflowType` URL query overrides; the experiment tag alone does not (checked in a browser by
scripts/check_mlflow_ui.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import mlflow

from dutrain.tracking import stage_run
from dutrain.tracking.mlflow_run import UI_QUERY, ui_url

QUIET = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def test_ui_url():
    assert UI_QUERY == "workflowType=machine_learning"
    assert ui_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert ui_url("https://mlflow.example", "7", "abc") == \
        "https://mlflow.example/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert ui_url("sqlite:///tmp/mlflow.db", "7") is None
    assert ui_url("/tmp/mlruns", "7", "abc") is None


class _Client:
    """Just what stage_run calls; records whether MLflow's own link lines were off."""

    def __init__(self, tracking_uri=None):
        self.quiet_at_end = None

    def get_experiment_by_name(self, name):
        return SimpleNamespace(experiment_id="3", tags={"mlflow.experimentKind": "x"})

    def create_run(self, exp_id, tags=None, run_name=None):
        return SimpleNamespace(info=SimpleNamespace(run_id="r1", artifact_uri="/tmp/a"),
                               data=SimpleNamespace(params={}))

    def log_batch(self, *a, **k):
        pass

    def log_artifact(self, *a, **k):
        pass

    def set_terminated(self, run_id, status=None):
        self.quiet_at_end = os.environ.get(QUIET)
        _Client.last = self


def test_stage_prints_runs_view_links(monkeypatch, capsys):
    monkeypatch.setattr(mlflow, "MlflowClient", _Client)
    monkeypatch.delenv(QUIET, raising=False)
    for var in ("DUTRAIN_PARENT_RUN_ID", "DUTRAIN_PIPELINE_ID", "DUTRAIN_RUN_ID", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    with stage_run(None, "eval", run_name="e1"):
        pass
    assert _Client.last.quiet_at_end == "true" and QUIET not in os.environ
    exp = "http://127.0.0.1:5999/#/experiments/3"
    assert capsys.readouterr().out.splitlines() == [
        f"View run e1 at: {exp}/runs/r1?workflowType=machine_learning",
        f"View experiment at: {exp}?workflowType=machine_learning"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")  # no UI: no links
    with stage_run(None, "eval", run_name="e2"):
        pass
    assert capsys.readouterr().out == ""
