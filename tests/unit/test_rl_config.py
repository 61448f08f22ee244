"""`dutrain rl` config: the shipped YAMLs load, and bad combinations fail before any actor."""

from __future__ import annotations

from pathlib import Path

import pytest

from dutrain.config import VERBS, ConfigError, load_config
from dutrain.config.rl import RLConfig
from dutrain.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "workflows/configs/rl").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(RLConfig, path)
    assert (cfg.prompts_per_step * cfg.group_size) % cfg.learner.workers == 0


def test_rl_verb_is_registered():
    assert VERBS["rl"].config_class() is RLConfig


@pytest.mark.parametrize("overrides, message", [
    (["learner.workers=3"], "a divisor of prompts_per_step x group_size = 32"),
    (["rollout.workers=9"], "at most prompts_per_step = 8"),
    (["rollout.temperature=0"], "must be > 0"),
    (["placement=colocated", "rollout.workers=1", "learner.workers=2"], "rollout.workers"),
    (["reward.kind=type_mention", "reward.target_type=fog"], "reward.target_type"),
    (["learner.backend=nccl"], "gpus_per_worker"),
    (["group_size=1"], "group_size"),
    (["loss.norm=token"], "grpo"),
    (["mode=offpolicy"], "sync"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, overrides=overrides)


def test_staleness_bound_follows_the_mode():
    assert load_config(RLConfig).staleness_bound == 0
    assert load_config(RLConfig, overrides=["mode=async", "max_staleness=2"]).staleness_bound == 2


def test_missing_dataset_fails_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    from dutrain.rl.controller import run

    # Independent of test order (a session cluster may be up): any Ray start is recorded.
    started = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(a or k))
    cfg = load_config(RLConfig, overrides=[f"dataset={tmp_path / 'none'}",
                                           "tracking.enabled=false"])
    with pytest.raises(UserError, match="bad value for 'dataset'"):
        run(cfg)  # the CLI prints it as one line, exit 2
    assert started == []
