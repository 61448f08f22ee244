"""`dutrain sweep` at demo size on the local Ray cluster and a real MLflow server.

The base verb is `eval` of the prior baseline on a small generated dataset (seconds per trial),
with one trial pointed at a dataset that does not exist yet: it must be a FAILED child with its
error while the others finish; a rerun, once that dataset exists, must run only that trial.
"""

from __future__ import annotations

import csv
import uuid

import pytest
from mlflow import MlflowClient

from dutrain.cli import main
from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data.generate import generate

METRIC = "test/type_exact"


@pytest.fixture(scope="module")
def small_data(ray_local, tmp_path_factory, project_root):
    out = tmp_path_factory.mktemp("sweepdata") / "data"
    generate(load_config(GenerateConfig, project_root / "workflows/configs/generate/demo.yaml",
                         overrides=[f"output={out}", "samples=160", "rows_per_shard=80",
                                    "preview_pairs=0", "progress=false", "ood_fraction=0",
                                    "tracking.enabled=false"]))
    return out


def test_sweep_tree_failed_trial_and_resume(small_data, mlflow_server, tmp_path, project_root,
                                            capsys):
    exp = f"sweep-{uuid.uuid4().hex[:8]}"
    MlflowClient(mlflow_server).create_experiment(exp)  # also wakes a server slow to first answer
    missing = tmp_path / "later"  # a dataset that appears only before the rerun
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"""
verb: eval
base: {project_root / 'workflows/configs/eval/baseline_prior.yaml'}
overrides:
  splits: [test]
  plots: false
space:
  limit: {{grid: [6, 12]}}
  dataset: {{grid: ['{small_data}', '{missing}']}}
metric: {METRIC}
mode: max
max_concurrent: 2
""")
    args = ["sweep", "--config", str(cfg), f"output={tmp_path / 'out'}",
            f"tracking.uri={mlflow_server}", f"tracking.experiment={exp}"]
    assert main(args) == 1  # two trials failed; the other two finished
    out, err = capsys.readouterr()
    assert "2 finished, 0 stopped early, 2 failed" in out and "failed (t001-" in err

    client = MlflowClient(mlflow_server)
    exp_id = client.get_experiment_by_name(exp).experiment_id
    runs = client.search_runs([exp_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("dutrain.stage") == "sweep"]
    assert len(parents) == 1
    pid = parents[0].info.run_id
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    assert len(kids) == 4 and {r.data.tags["dutrain.stage"] for r in kids} == {"eval"}
    ok = [r for r in kids if r.info.status == "FINISHED"]
    bad = [r for r in kids if r.info.status == "FAILED"]
    assert len(ok) == 2 and len(bad) == 2
    for r in ok:
        assert r.data.params["dataset"] == str(small_data) and METRIC in r.data.metrics
        assert r.data.params["model"] == "baseline:prior"  # the base YAML's own keys
    for r in bad:
        assert r.data.params["dataset"] == str(missing)  # the space's choices as params
        assert "dataset" in r.data.tags["dutrain.error"] and str(missing) in \
            r.data.tags["dutrain.error"]
        assert "error.txt" in {a.path for a in client.list_artifacts(r.info.run_id)}
    arts = {a.path for a in client.list_artifacts(pid)}
    assert {"sweep.md", "sweep.csv", "sweep.png", "sweep_vs_params.png"} <= arts
    assert parents[0].data.metrics["sweep/failed"] == 2

    # the table: sorted by the metric (failed last), the swept params as columns
    with open(tmp_path / "out/sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["FINISHED", "FINISHED", "FAILED", "FAILED"]
    vals = [float(r[METRIC]) for r in rows[:2]]
    assert vals == sorted(vals, reverse=True) and {"limit", "dataset"} <= set(rows[0])
    assert (tmp_path / "out/sweep_vs_params.png").stat().st_size > 1000

    # Resume: the missing dataset now exists; the same command runs only the failed trials.
    missing.symlink_to(small_data, target_is_directory=True)
    finished_before = {r.info.run_name: r.info.run_id for r in ok}
    assert main(args) == 0
    out, _ = capsys.readouterr()
    assert "2 to run, 2 already done" in out and "4 finished" in out
    runs = client.search_runs([exp_id], max_results=100)
    assert [r.info.run_id for r in runs if r.data.tags.get("dutrain.stage") == "sweep"] == [pid]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    by_name: dict[str, list] = {}
    for r in kids:
        by_name.setdefault(r.info.run_name, []).append(r)
    for name, rid in finished_before.items():  # not rerun
        assert [r.info.run_id for r in by_name[name]] == [rid]
    for r in bad:  # rerun: the old FAILED child stays, a new FINISHED one joins it
        assert sorted(x.info.status for x in by_name[r.info.run_name]) == ["FAILED", "FINISHED"]
    with open(tmp_path / "out/sweep.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["FINISHED"] * 4


def test_sweep_stopped_midway_continues_without_rerunning_finished_trials(
        small_data, mlflow_server, tmp_path, project_root, capsys):
    exp = f"sweep-{uuid.uuid4().hex[:8]}"
    MlflowClient(mlflow_server).create_experiment(exp)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"""
verb: eval
base: {project_root / 'workflows/configs/eval/baseline_prior.yaml'}
overrides: {{splits: [test], plots: false, dataset: '{small_data}'}}
space:
  limit: {{grid: [4, 6, 8]}}
metric: {METRIC}
max_concurrent: 1
cpus_per_trial: 0   # Ray refuses an empty reservation: the sweep asks for a sliver
""")
    args = ["sweep", "--config", str(cfg), f"output={tmp_path / 'out'}",
            f"tracking.uri={mlflow_server}", f"tracking.experiment={exp}"]
    # ended by Tune once one trial has finished, as an interruption would end it
    assert main([*args, "stop_after=1"]) == 0
    out, _ = capsys.readouterr()
    assert "stopped after 1 finished trial(s)" in out
    client = MlflowClient(mlflow_server)
    exp_id = client.get_experiment_by_name(exp).experiment_id
    kids = client.search_runs([exp_id], "tags.`dutrain.stage` = 'eval'")
    done = [r for r in kids if r.info.status == "FINISHED"]
    assert len(done) == 1
    for r in kids:  # a trial cut off while running: KILLED, marked interrupted
        assert r.info.status in ("FINISHED", "KILLED")
        if r.info.status == "KILLED":
            assert r.data.tags["dutrain.trial_status"] == "interrupted"
    (parent,) = client.search_runs([exp_id], "tags.`dutrain.stage` = 'sweep'")

    assert main(args) == 0  # the same command again: only the two unfinished trials run
    out, _ = capsys.readouterr()
    assert "2 to run, 1 already done" in out and "3 finished" in out
    kids = client.search_runs([exp_id], "tags.`dutrain.stage` = 'eval'")
    again = [r for r in kids if r.info.run_name == done[0].info.run_name]
    assert [r.info.run_id for r in again] == [done[0].info.run_id]  # not rerun
    assert len({r.info.run_name for r in kids if r.info.status == "FINISHED"}) == 3
    assert [r.info.run_id for r in client.search_runs(
        [exp_id], "tags.`dutrain.stage` = 'sweep'")] == [parent.info.run_id]  # one parent
