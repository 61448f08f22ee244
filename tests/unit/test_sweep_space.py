"""`dutrain sweep`'s search space: parsing, schema checks and expansion, all before Ray starts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dutrain.cli import main
from dutrain.config import ConfigError, load_config
from dutrain.config.sweep import SweepConfig
from dutrain.sweep.space import SpaceError, expand, parse_space, plan

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, **over):
    flat = {"verb": "sft", "output": str(tmp_path / "sweep"),
            "tracking": {"uri": f"sqlite:///{tmp_path / 'm.db'}"}, **over}
    return load_config(SweepConfig, overrides=flat, verb="sweep")


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(SpaceError, match=r"unknown key 'lrr' in 'space' for 'sft' "
                                         r"\(did you mean 'lr'\?\)"):
        parse_space({"lrr": {"grid": [1e-3]}}, "sft")
    with pytest.raises(SpaceError, match=r"did you mean 'sft.lr'"):
        parse_space({"sft.lrr": {"grid": [1e-3]}}, "pipeline")
    with pytest.raises(SpaceError, match=r"did you mean 'tiny.patch_size'"):
        parse_space({"tiny": {"patch_sise": {"grid": [16]}}}, "sft")  # nested form


def test_reserved_section_and_bad_distributions_are_named():
    with pytest.raises(SpaceError, match="the sweep sets output"):
        parse_space({"output": {"grid": ["a", "b"]}}, "eval")
    with pytest.raises(SpaceError, match="'tracking.experiment'"):
        parse_space({"tracking.experiment": {"grid": ["a"]}}, "eval")
    with pytest.raises(SpaceError, match="'tiny' is a section of 'sft'"):
        parse_space({"tiny": {"grid": [1]}}, "sft")
    with pytest.raises(SpaceError, match=r"'space.lr.uniform': \[0.1\]"):
        parse_space({"lr": {"uniform": [0.1]}}, "sft")
    with pytest.raises(SpaceError, match="> 0, low < high"):
        parse_space({"lr": {"loguniform": [0.0, 1.0]}}, "sft")
    with pytest.raises(SpaceError, match="low < high"):
        parse_space({"lr": {"uniform": [2, 1]}}, "sft")
    with pytest.raises(SpaceError, match="unknown distribution 'normal' for 'space.lr'"):
        parse_space({"lr": {"normal": [0, 1]}}, "sft")
    with pytest.raises(SpaceError, match="'space.lr.grid': \\[\\]"):
        parse_space({"lr": {"grid": []}}, "sft")


def test_expansion_is_grid_times_samples_and_seeded():
    dims = parse_space({"batch_size": {"grid": [8, 16]}, "lr": {"loguniform": [1e-4, 1e-2]},
                        "target": {"choice": ["reasoning", "answer"]},
                        "max_steps": {"uniform": [10, 20]}}, "sft")
    trials = expand(dims, 3, seed=7)
    assert len(trials) == 6 and [r for r, _ in trials] == [0, 0, 1, 1, 2, 2]
    assert [t["batch_size"] for _, t in trials] == [8, 16] * 3
    assert all(1e-4 <= t["lr"] <= 1e-2 and t["target"] in ("reasoning", "answer")
               for _, t in trials)
    assert all(isinstance(t["max_steps"], int) and 10 <= t["max_steps"] <= 20
               for _, t in trials)  # an integer key draws integers
    assert list(trials[0][1]) == ["batch_size", "lr", "target", "max_steps"]
    assert expand(dims, 3, seed=7) == trials  # the same seed: the same trials
    assert expand(dims, 3, seed=8) != trials
    assert expand(dims, 5, seed=7)[:6] == trials  # more samples keep the ones drawn before
    logs = [math.log10(t["lr"]) for _, t in expand(dims, 200, seed=1)]
    assert min(logs) < -3.5 and max(logs) > -2.5  # log-uniform spreads over the decades


def test_plan_validates_every_trial_config_and_gives_stable_names(tmp_path):
    cfg = _cfg(tmp_path, base=str(ROOT / "workflows/configs/sft/demo.yaml"),
               overrides={"max_steps": 60, "warmup_steps": 5},
               space={"lr": {"grid": [1e-3, 2e-3, 4e-3]}})
    trials = plan(cfg)
    assert [t.overrides for t in trials] == [{"lr": 1e-3}, {"lr": 2e-3}, {"lr": 4e-3}]
    assert len({t.key for t in trials}) == 3 and trials[0].name.startswith("t000-")
    c = trials[1].config
    assert c["lr"] == 2e-3 and c["max_steps"] == 60
    assert c["tiny"]["patch_size"] == 16  # from the base YAML
    assert c["output"] == str(tmp_path / "sweep" / "trials" / trials[1].name)
    assert c["tracking"]["run_name"] == trials[1].name
    assert [t.key for t in plan(cfg)] == [t.key for t in trials]  # stable across runs
    # a value the schema refuses fails the command, naming the trial
    bad = _cfg(tmp_path, space={"lr": {"grid": [1e-3, -1.0]}})
    with pytest.raises(ConfigError, match=r"bad value for 'lr': -1.0 .* \(in the trial lr=-1.0\)"):
        plan(bad)
    with pytest.raises(SpaceError, match=r"unknown key 'max_step' in 'overrides' .*'max_steps'"):
        plan(_cfg(tmp_path, overrides={"max_step": 5}, space={"lr": {"grid": [1e-3]}}))


def test_sweep_config_checks():
    with pytest.raises(ConfigError, match="missing value for 'space'"):
        load_config(SweepConfig, overrides={}, verb="sweep")
    with pytest.raises(ConfigError, match="tracking.enabled"):
        load_config(SweepConfig, overrides={"space": {"lr": {"grid": [1]}},
                                            "tracking": {"enabled": False}}, verb="sweep")
    with pytest.raises(ConfigError, match="'early_stop.enabled' needs 'metric'"):
        load_config(SweepConfig, overrides={"space": {"lr": {"grid": [1]}},
                                            "early_stop": {"enabled": True}}, verb="sweep")
    with pytest.raises(ConfigError, match="bad value for 'verb'"):
        load_config(SweepConfig, overrides={"verb": "compare", "space": {"a": {"grid": [1]}}},
                    verb="sweep")


def test_cli_refuses_an_unknown_key_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*a, **k):  # an earlier test of the session may have Ray up: watch init instead
        raise AssertionError("Ray was started")
    monkeypatch.setattr(ray, "init", no_ray)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("verb: eval\nspace:\n  limt: {grid: [1, 2]}\n")
    assert main(["sweep", "--config", str(cfg), f"output={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "dutrain sweep: error: unknown key 'limt' in 'space' for 'eval' (did you mean " \
           "'limit'?)" in err
    assert not (tmp_path / "o").exists()


def test_demo_preset_plans(tmp_path):
    cfg = load_config(SweepConfig, ROOT / "workflows/configs/sweep/demo.yaml",
                      overrides=[f"output={tmp_path}"], verb="sweep")
    trials = plan(cfg)
    assert len(trials) >= 3 and cfg.metric


@pytest.mark.parametrize("name, verb, arms", [
    ("reasoning", "sft", {"target": {"reasoning", "answer"}, "seed": {0, 1}}),
    ("reasoning_gpu", "sft", {"target": {"reasoning", "answer"}, "seed": {0, 1}}),
    ("reward", "rl", {"reward.weights.value": {0.2, 0.4}, "loss.kl_coef": {0.02, 0.5}}),
    ("reward_gpu", "rl", {"loss.kl_coef": {0.02, 0.1, 0.5}}),
    ("grid", "sft", {"grid_factor": {1, 2, 4, 8}, "seed": {0, 1}}),
    ("grid_gpu", "sft", {"grid_factor": {1, 2, 4, 8}, "seed": {0, 1}})])
def test_ablation_presets_plan_every_arm_with_seeds(tmp_path, name, verb, arms):
    cfg = load_config(SweepConfig, ROOT / f"workflows/configs/sweep/{name}.yaml",
                      overrides=[f"output={tmp_path}"], verb="sweep")
    trials = plan(cfg)  # every trial's config validated against the verb's schema
    assert cfg.verb == verb and cfg.metric
    for key, values in arms.items():
        assert {t.overrides[key] for t in trials} == values
    assert len({t.overrides["seed"] for t in trials}) == 2  # a spread across seeds, not one run


def test_pipeline_trials_get_their_own_workdir_and_stage_metrics(tmp_path):
    from mlflow import MlflowClient

    from dutrain.sweep.trial import _child_metrics

    cfg = _cfg(tmp_path, verb="pipeline", overrides={"stages": ["generate", "sft"]},
               space={"sft.lr": {"grid": [1e-3, 2e-3]}})
    trials = plan(cfg)
    assert [t.config["sft"]["lr"] for t in trials] == [1e-3, 2e-3]
    assert trials[0].config["workdir"] == str(tmp_path / "sweep" / "trials" / trials[0].name)
    assert trials[0].config["tracking"]["run_name"] == trials[0].name
    # a pipeline trial's stage runs are its children: their metrics, named by stage
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("x")
    trial = client.create_run(exp).info.run_id
    for stage, out, value in (("sft", "s", 0.5), ("eval", "/w/eval/model", 0.7)):
        kid = client.create_run(exp, tags={"mlflow.parentRunId": trial,
                                           "dutrain.stage": stage}).info.run_id
        client.log_param(kid, "output", out)
        client.log_metric(kid, "val/loss" if stage == "sft" else "test/type_f1", value)
    assert _child_metrics(client, trial) == {"sft/val/loss": 0.5, "eval-model/test/type_f1": 0.7}


def test_a_trial_keeps_its_folder_when_the_space_renumbers_it(tmp_path):
    cfg = _cfg(tmp_path, space={"lr": {"grid": [1e-3, 2e-3]}})
    first = plan(cfg)
    (tmp_path / "sweep" / "trials" / first[1].name).mkdir(parents=True)
    wider = plan(_cfg(tmp_path, space={"lr": {"grid": [5e-4, 1e-3, 2e-3]}}))
    assert [t.key for t in wider][1:] == [t.key for t in first]
    assert wider[2].name == first[1].name == f"t001-{first[1].key}"  # kept, not t002-…
    assert wider[1].name == f"t001-{first[0].key}"  # never ran: numbered afresh
