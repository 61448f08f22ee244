"""The pipeline's switchable offline stage: off by default; when listed it runs between sft and
rl, starts from sft's model, and rl starts from its model (`dutrain.pipeline.plan`)."""

from __future__ import annotations

import pytest

from dutrain.config import load_config
from dutrain.config.pipeline import PipelineConfig
from dutrain.errors import UserError
from dutrain.pipeline import plan, preflight_pipeline

OFF = "tracking.enabled=false"


def _jobs(tmp_path, *overrides):
    cfg = load_config(PipelineConfig, overrides=[f"workdir={tmp_path}", OFF, *overrides])
    return cfg, {j.label: j for j in plan(cfg)}


def test_offline_is_off_by_default(tmp_path):
    cfg, jobs = _jobs(tmp_path)
    assert "offline" not in cfg.stages and "offline" not in jobs
    assert jobs["rl"].config.model == str(tmp_path / "sft" / "final")


def test_offline_between_sft_and_rl(tmp_path):
    cfg, jobs = _jobs(tmp_path, "stages=[generate,sft,offline,rl,eval]", "baselines=[]",
                      "offline.samples_per_prompt=3")
    assert list(jobs) == ["generate", "sft", "offline", "rl", "eval-model"]
    off = jobs["offline"].config
    assert off.model == str(tmp_path / "sft" / "final")
    assert off.dataset == str(tmp_path / "data") and off.output == str(tmp_path / "offline")
    assert off.samples_per_prompt == 3
    assert jobs["rl"].config.model == str(tmp_path / "offline" / "final")
    assert jobs["eval-model"].config.model == str(tmp_path / "rl" / "final")


def test_eval_of_the_offline_model(tmp_path):
    _, jobs = _jobs(tmp_path, "stages=[generate,sft,offline,eval]", "baselines=[]",
                    "eval_model=offline")
    assert jobs["eval-model"].config.model == str(tmp_path / "offline" / "final")


def test_offline_without_an_sft_model_fails_before_anything_runs(tmp_path):
    cfg = load_config(PipelineConfig, overrides=[f"workdir={tmp_path}", OFF,
                                                 "stages=[offline]"])
    with pytest.raises(UserError, match="stage 'offline' starts from the sft stage's model"):
        preflight_pipeline(cfg)


def test_an_unlisted_stage_file_is_not_read(tmp_path):
    """A preset names offline's file by a repo-relative path; a run started elsewhere that does
    not list the stage must not need it, one that lists it must name the missing file."""
    missing = str(tmp_path / "nowhere/offline.yaml")
    layers = [{"stages": ["generate", "sft"], "stage_configs": {"offline": missing}}]
    assert PipelineConfig.expand_layers(layers) == layers
    with pytest.raises(UserError, match="nowhere/offline.yaml"):
        PipelineConfig.expand_layers(layers + [{"stages": ["generate", "sft", "offline"]}])
