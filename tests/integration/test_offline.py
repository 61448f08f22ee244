"""`dutrain offline` end to end on the tiny model (issue 20): vLLM samples in Ray actors, scored
with the structured reward, Parquet beside the run, pair statistics in MLflow, DPO with TRL's
DPOTrainer, and a final checkpoint that `dutrain eval` serves; bad inputs are one-line errors
before any actor.

The random tiny model under the answer grammar at temperature 1 gives valid answers whose
rewards differ between samples (tests/integration/test_eval_model.py), so pairs exist.
Asserted: after a few DPO steps the policy's mean log-prob margin of chosen over rejected on the
training pairs rises by at least MARGIN nats (measured with `encode_sft`, not TRL's numbers).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from test_eval_data import write_dataset

from dutrain.cli import main
from dutrain.models import load_model, tiny_model
from dutrain.models.loading import check_model_dir

MARGIN = 1.0
GEN = ["generation.structured=true", "generation.max_tokens=96", "generation.batch_size=32",
       "generation.temperature=1.0", "generation.seed=0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("offds") / "ds", {"train": 6, "test": 2},
                         size=64, seed=3)


def test_offline_samples_scores_pairs_and_trains(dataset, tmp_path, ray_local, capsys):
    model = tiny_model()
    out = tmp_path / "out"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["offline", f"model={model}", f"dataset={dataset}", f"output={out}",
               "samples_per_prompt=4", "min_margin=0.0", "max_pairs_per_prompt=2",
               "lr=0.001", "beta=0.1", "batch_size=4", "max_steps=6", "epochs=10",
               "progress=false", f"tracking.uri={db}", "tracking.experiment=offline-test", *GEN])
    assert rc == 0
    samples = pq.read_table(out / "samples" / "samples.parquet")
    assert samples.num_rows == 6 * 4
    assert {"prompt_id", "sample_index", "completion", "format", "type", "key", "value",
            "total"} <= set(samples.column_names)
    pairs = pq.read_table(out / "pairs" / "pairs.parquet").to_pylist()
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert pq.read_table(out / "pairs" / "best.parquet").num_rows == 6
    check_model_dir(out / "final")
    load_model(out / "final")
    summary = json.loads((out / "final" / "dutrain_offline.json").read_text())
    print(f"log-prob margin: {summary['train/logp_margin_before']} → "
          f"{summary['train/logp_margin_after']}")
    assert summary["train/logp_margin_after"] >= summary["train/logp_margin_before"] + MARGIN
    client = MlflowClient(db)
    run = client.search_runs([client.get_experiment_by_name("offline-test").experiment_id])[0]
    assert run.data.tags["dutrain.stage"] == "offline"
    m = run.data.metrics
    assert m["pairs/kept"] == len(pairs) and m["pairs/chosen_reward"] > m["pairs/rejected_reward"]
    assert "pairs/mean_margin" in m and "train/logp_margin_after" in m
    # the final checkpoint is an ordinary model for `dutrain eval` (vLLM actors)
    assert main(["eval", f"model={out / 'final'}", f"dataset={dataset}", "splits=[test]",
                 f"output={tmp_path / 'eval'}", "tracking.enabled=false", "plots=false",
                 *GEN]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/n"] == 2


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line_errors(dataset, tmp_path, capsys):
    off = "tracking.enabled=false"
    base = [f"dataset={dataset}", f"output={tmp_path / 'o'}", off]
    err = _one_line_error(capsys, ["offline", "model=tiny", "samples_per_prompt=1", *base])
    assert "samples_per_prompt" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    err = _one_line_error(capsys, ["offline", f"model={bad}", *base])
    assert "bad value for 'model'" in err and "config.json' is not JSON" in err
    no_train = write_dataset(tmp_path / "nt", {"test": 3}, size=64, seed=4)
    err = _one_line_error(capsys, ["offline", "model=tiny", f"dataset={no_train}",
                                   f"output={tmp_path / 'o'}", off])
    # the message names the dataset and the split it lacks ("dutrain" alone contains "train")
    assert "bad value for 'dataset'" in err and "has no 'train' rows" in err
    assert not (tmp_path / "o").exists()
