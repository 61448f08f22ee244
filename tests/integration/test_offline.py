"""`dutrain offline` end to end on the tiny model (issue 20): vLLM samples in Ray actors, scored
with the structured reward, Parquet beside the run, pair statistics in MLflow, DPO with TRL's
DPOTrainer in two Ray Train workers (DDP over gloo), and a final checkpoint that `dutrain eval`
serves; progress bars; rejection-sampling fine-tuning through the SFT loop; an interrupted run
resumed without resampling; bad inputs are one-line errors before any actor.

The random tiny model under the answer grammar at temperature 1 gives valid answers whose
rewards differ between samples (tests/integration/test_eval_model.py), so pairs exist.
Asserted: after a few DPO steps the policy's mean log-prob margin of chosen over rejected on the
training pairs rises by at least MARGIN nats (measured with `encode_sft`, not TRL's numbers).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file
from test_eval_data import write_dataset

from dutrain.cli import main
from dutrain.io.dataset import decode_png, read_table
from dutrain.models import encode_sft, load_model, load_processor, tiny_model
from dutrain.models.loading import check_model_dir
from dutrain.offline.dpo import _completion_logps

MARGIN = 1.0
RFT_GAIN = 10.0  # nats of the best completions' mean log-prob after 4 RFT steps (measured 38)
GEN = ["generation.structured=true", "generation.max_tokens=96", "generation.batch_size=32",
       "generation.temperature=1.0", "generation.seed=0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("offds") / "ds",
                         {"train": 6, "val": 2, "test": 2}, size=64, seed=3)


def test_offline_samples_scores_pairs_and_trains(dataset, tmp_path, ray_local, capsys):
    model = tiny_model()
    out = tmp_path / "out"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["offline", f"model={model}", f"dataset={dataset}", f"output={out}",
               "samples_per_prompt=4", "min_margin=0.0", "max_pairs_per_prompt=2",
               "lr=0.001", "beta=0.1", "batch_size=2", "max_steps=6", "epochs=10",
               "num_workers=2", "cpus_per_worker=1", "progress=true", f"tracking.uri={db}",
               "tracking.experiment=offline-test", *GEN])
    assert rc == 0
    # progress bars on stderr: the 24 samples, then the 6 DPO steps of 2 x 2 pairs (posted by
    # the rank-0 Ray Train worker through dutrain.tracking.progress)
    err = capsys.readouterr().err
    assert "offline sample" in err and "24/24" in err, err[-2000:]
    assert "offline dpo" in err and "6/6" in err, err[-2000:]
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


def mean_logp(model_dir, dataset, samples):
    """Mean summed log-prob of each sample's completion given its image (`encode_sft`)."""
    rows = {r["sample_id"]: r for r in read_table(dataset, ["train"]).to_pylist()}
    model, processor = load_model(model_dir), load_processor(model_dir)
    model.eval()
    with torch.no_grad():
        return float(np.mean(_completion_logps(model, encode_sft(
            processor, [decode_png(rows[s["prompt_id"]]["degraded"]) for s in samples],
            [s["completion"] for s in samples]))))


def test_rft_trains_the_best_samples_with_the_sft_loop(dataset, tmp_path, ray_local, capsys):
    """method=rft: each image's best sample (reward >= rft_min_reward) as the SFT loop's target
    (Ray Train workers, dutrain.sft.loop), val loss on the dataset's val rows."""
    model = tiny_model()
    out = tmp_path / "rft"
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["offline", "method=rft", f"model={model}", f"dataset={dataset}", f"output={out}",
               "samples_per_prompt=4", "rft_min_reward=0.0", "lr=0.001", "batch_size=3",
               "max_steps=4", "val_samples=2", "progress=true", f"tracking.uri={db}",
               "tracking.experiment=rft-test", *GEN])
    assert rc == 0
    err = capsys.readouterr().err
    assert "offline sample" in err and "offline rft" in err and "4/4" in err, err[-2000:]
    best = pq.read_table(out / "pairs" / "best.parquet").to_pylist()
    summary = json.loads((out / "final" / "dutrain_offline.json").read_text())
    assert summary["method"] == "rft" and summary["rft/kept"] == len(best) == 6
    check_model_dir(out / "final")
    before, after = mean_logp(model, dataset, best), mean_logp(out / "final", dataset, best)
    print(f"best samples' mean log-prob: {before:.2f} → {after:.2f}")
    assert after >= before + RFT_GAIN
    client = MlflowClient(db)
    run = client.search_runs([client.get_experiment_by_name("rft-test").experiment_id])[0]
    assert run.data.tags["dutrain.stage"] == "offline"
    m = run.data.metrics
    assert m["rft/kept"] == 6 and "train/loss" in m and "val/loss" in m


def test_interrupted_run_resumes_without_resampling(dataset, tmp_path, ray_local, capsys):
    """stop_at_step=2 leaves a checkpoint and no final/; the rerun reuses the samples (the
    Parquet is not rewritten) and continues DPO from step 2; its weights equal those of an
    uninterrupted run on the same samples."""
    model = tiny_model()
    out = tmp_path / "out"
    args = ["offline", f"model={model}", f"dataset={dataset}", "samples_per_prompt=4",
            "min_margin=0.0", "max_pairs_per_prompt=2", "lr=0.001", "batch_size=4",
            "max_steps=4", "checkpoint_every=2", "progress=false", "tracking.enabled=false",
            *GEN]
    assert main([*args, f"output={out}", "stop_at_step=2"]) == 0
    assert not (out / "final").exists() and list((out / "train").glob("checkpoint_*"))
    parquet = out / "samples" / "samples.parquet"
    stamp = parquet.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, f"output={out}"]) == 0
    assert "reusing the 24 samples" in capsys.readouterr().err
    assert parquet.stat().st_mtime_ns == stamp
    summary = json.loads((out / "final" / "dutrain_offline.json").read_text())
    assert summary["sample/reused"] == 1.0
    assert summary["train/resumed_from_step"] == 2.0 and summary["train/steps"] == 4.0
    # the same samples in a fresh output (reused: same model, data and sampling), no stop
    whole = tmp_path / "whole"
    shutil.copytree(out / "samples", whole / "samples")
    assert main([*args, f"output={whole}"]) == 0
    a = load_file(out / "final" / "model.safetensors")
    b = load_file(whole / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"resumed vs uninterrupted: max |Δweight| = {worst:.2e}")
    assert worst <= 1e-5


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
    no_val = write_dataset(tmp_path / "nv", {"train": 3}, size=64, seed=4)
    err = _one_line_error(capsys, ["offline", "model=tiny", "method=rft", f"dataset={no_val}",
                                   f"output={tmp_path / 'o'}", off])
    assert "bad value for 'dataset'" in err and "has no 'val' rows" in err
    assert not (tmp_path / "o").exists()
