"""MLflow as its UI expects it: dutrain's experiments are model-training experiments, and each
stage run carries the dataset it read as an MLflow dataset input (card fingerprint as digest)."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from dutrain.config import load_config
from dutrain.config.eval import EvalConfig
from dutrain.config.restore import RestoreConfig
from dutrain.tracking import stage_run
from dutrain.tracking.mlflow_run import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG


def _card(root, fingerprint):
    root.mkdir(parents=True)
    (root / "dataset_card.json").write_text(json.dumps({
        "format": "dutrain-dataset-card/1", "fingerprint": fingerprint,
        "columns": ["sample_id", "split"], "counts": {"rows": 40, "per_split": {"test": 40}}}))
    return root


def test_experiment_kind_and_dataset_inputs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("older")  # made before this change: gets the tag too
    data = _card(tmp_path / "demo-data", "90b56cbdce7b62b3")
    cfg = load_config(EvalConfig, overrides=[f"dataset={data}", f"tracking.uri={uri}",
                                             "tracking.experiment=ux"], verb="eval")
    with stage_run(cfg, "eval") as run:
        pass
    exp = client.get_experiment_by_name("ux")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert (ds.name, ds.digest, ds.source_type) == ("demo-data", "90b56cbdce7b62b3", "local")
    assert json.loads(ds.source) == {"uri": str(data)}
    assert json.loads(ds.profile)["rows"] == 40
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "evaluation"}

    # restore reads `input`; a folder without a card (not a dutrain dataset) logs no input
    rcfg = load_config(RestoreConfig, overrides=[f"input={data}", f"tracking.uri={uri}",
                                                 "tracking.experiment=older"], verb="restore")
    with stage_run(rcfg, "restore") as run2:
        pass
    assert client.get_run(run2.run_id).inputs.dataset_inputs[0].dataset.digest == \
        "90b56cbdce7b62b3"
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg2 = load_config(EvalConfig, overrides=[f"dataset={bare}", f"tracking.uri={uri}",
                                              "tracking.experiment=ux"], verb="eval")
    with stage_run(cfg2, "eval") as run3:
        pass
    assert client.get_run(run3.run_id).inputs.dataset_inputs == []
