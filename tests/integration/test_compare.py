"""`dutrain compare` against a real MLflow server on 127.0.0.1 with runs this test creates."""

from __future__ import annotations

import csv
import uuid

import pytest
from mlflow import MlflowClient

from dutrain.cli import main
from dutrain.config import load_config
from dutrain.config.eval import EvalConfig
from dutrain.tracking import stage_run


@pytest.fixture(scope="module")
def runs(mlflow_server):
    exp = f"compare-{uuid.uuid4().hex[:8]}"
    made = {}
    for name, model, f1, group in (("sft-only", "ckpt/sft", 0.4, "a"),
                                   ("sft-rl", "ckpt/rl", 0.6, "a"),
                                   ("prior", "baseline:prior", 0.1, "b")):
        cfg = load_config(EvalConfig, overrides=[
            f"model={model}", f"tracking.uri={mlflow_server}", f"tracking.experiment={exp}",
            f"tracking.run_name={name}"], verb="eval")
        with stage_run(cfg, "eval", params={"model": model}, tags={"group": group}) as run:
            run.log_metrics({"test/type_f1": f1, "ood/type_f1": f1 / 2, "test/value_nmae": 1 - f1,
                             "eval/samples_per_s": 10.0})
        made[name] = run.run_id
    return mlflow_server, exp, made


def _compare(uri, exp, out, *extra):
    rc = main(["compare", f"tracking.uri={uri}", f"tracking.experiment={exp}", f"output={out}",
               *extra])
    assert rc == 0
    with open(out / "compare.csv") as f:
        return list(csv.DictReader(f))


def test_compare_by_id_and_name_tabulates_differing_params_and_metrics(runs, tmp_path, capsys):
    uri, exp, made = runs
    rows = _compare(uri, exp, tmp_path, f"runs=[{made['sft-only']},sft-rl]")
    assert [r["run"] for r in rows] == ["sft-only", "sft-rl"]
    assert [r["model"] for r in rows] == ["ckpt/sft", "ckpt/rl"]
    assert "dataset" not in rows[0] and "tracking.run_name" not in rows[0]  # same / ignored
    assert [float(r["test/type_f1"]) for r in rows] == [0.4, 0.6]
    assert "eval/samples_per_s" not in rows[0]  # not a headline metric
    assert (tmp_path / "compare.png").stat().st_size > 1000
    assert "| sft-rl |" in (tmp_path / "compare.md").read_text()
    out = capsys.readouterr().out
    assert "sft-only" in out and "ckpt/rl" in out
    client = MlflowClient(uri)
    cmp_runs = client.search_runs([client.get_experiment_by_name(exp).experiment_id],
                                  "tags.`dutrain.stage` = 'compare'")
    assert cmp_runs[0].data.tags["dutrain.compared_runs"] == f"{made['sft-only']},{made['sft-rl']}"
    arts = {a.path for a in client.list_artifacts(cmp_runs[0].info.run_id)}
    assert {"compare.md", "compare.csv", "compare.png"} <= arts


def test_compare_by_filter_and_tags(runs, tmp_path):
    uri, exp, made = runs
    rows = _compare(uri, exp, tmp_path / "f", "filter=metrics.`test/type_f1` > 0.3",
                    "metrics=[test/value_nmae]")
    assert {r["run"] for r in rows} == {"sft-only", "sft-rl"}
    assert list(rows[0])[-1] == "test/value_nmae" and "test/type_f1" not in rows[0]
    rows = _compare(uri, exp, tmp_path / "t", "tags=[group=b]", "chart=line")
    assert [r["run"] for r in rows] == ["prior"]
    rows = _compare(uri, exp, tmp_path / "d")  # default: every eval run
    assert {r["run"] for r in rows} == {"sft-only", "sft-rl", "prior"}
    # both filters apply
    rows = _compare(uri, exp, tmp_path / "n", "runs=[sft-only,prior]", "tags=[group=a]")
    assert [r["run"] for r in rows] == ["sft-only"]


def test_latest_per_name_keeps_the_newest_run_of_each_name(mlflow_server, tmp_path):
    exp = f"compare-{uuid.uuid4().hex[:8]}"
    for name, f1 in (("eval-model", 0.3), ("eval-prior", 0.1), ("eval-model", 0.5)):
        cfg = load_config(EvalConfig, overrides=[f"tracking.uri={mlflow_server}",
                                                 f"tracking.experiment={exp}",
                                                 f"tracking.run_name={name}"], verb="eval")
        with stage_run(cfg, "eval") as run:
            run.log_metrics({"test/type_f1": f1})
    rows = _compare(mlflow_server, exp, tmp_path / "all")
    assert [r["run"] for r in rows] == ["eval-model", "eval-prior", "eval-model"]
    rows = _compare(mlflow_server, exp, tmp_path / "latest", "latest_per_name=true")
    assert [(r["run"], float(r["test/type_f1"])) for r in rows] == [("eval-prior", 0.1),
                                                                     ("eval-model", 0.5)]


def test_compare_names_what_did_not_match(runs, tmp_path, capsys):
    uri, exp, _ = runs
    base = ["compare", f"tracking.uri={uri}", f"tracking.experiment={exp}", f"output={tmp_path}"]
    assert main([*base, "runs=[nope]"]) == 2
    assert "no run with id or name 'nope'" in capsys.readouterr().err
    assert main([*base, "tags=[group=zzz]"]) == 2
    assert "no runs matched tags.`group` = 'zzz'" in capsys.readouterr().err
    assert main([*base, "tags=[group]"]) == 2
    assert "bad value for 'tags': 'group' (allowed: KEY=VALUE)" in capsys.readouterr().err
