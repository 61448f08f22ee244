"""RL actor groups on local Ray with the tiny model and real vLLM CPU engines.

- after a weight push every rollout engine serves exactly the learner's weights (a checksum read
  from the weights each engine computes with), and vLLM's greedy completions equal transformers'
  greedy completions on the learner;
- a rollout actor killed mid-step is replaced, its shard regenerated (same seeds, same tokens)
  and the step completes with a full batch.
"""

from __future__ import annotations

import pytest
from test_eval_data import write_dataset

from dutrain.config import load_config
from dutrain.config.rl import RLConfig
from dutrain.models import resolve_model
from dutrain.rl.controller import PromptSampler, score_batch
from dutrain.rl.groups import LearnerGroup, RolloutGroup
from dutrain.rl.scoring import reward_function
from dutrain.rl.weight_sync import finish_sync, learner_weight_stats, push_weights, weights_match

OVERRIDES = ["rollout.workers=2", "rollout.cpus_per_worker=0.5", "rollout.max_tokens=16",
             "learner.workers=1", "learner.cpus_per_worker=0.5", "learner.lr=1e-2",
             "prompts_per_step=4", "group_size=4", "reward.kind=type_mention"]


@pytest.fixture(scope="module")
def actors(ray_local, tmp_path_factory):
    from dutrain.io.dataset import read_table

    root = write_dataset(tmp_path_factory.mktemp("rl-data") / "ds", {"train": 16}, size=96)
    cfg = load_config(RLConfig, overrides=OVERRIDES)
    model_dir = str(resolve_model("tiny"))
    rollouts = RolloutGroup(cfg, model_dir)
    learners = LearnerGroup(cfg, model_dir)
    table = read_table(str(root), ["train"], ("sample_id", "degraded", "annotation"))
    yield cfg, rollouts, learners, PromptSampler(table, seed=0)
    rollouts.shutdown()
    learners.shutdown()


def _train_and_push(cfg, rollouts, learners, prompts, version):
    batch = rollouts.generate(prompts, cfg.group_size, seed=11)
    batch, _ = score_batch(batch, reward_function("type_mention"), cfg)
    # the toy reward is often 0 for all 16 samples of an untrained model: force a real update
    batch = batch.with_columns(advantage=[(-1.0) ** i for i in range(len(batch))])
    stats = learners.train(batch)
    finish_sync(rollouts, push_weights(learners, rollouts, version))
    return batch, stats


def test_engines_serve_the_learners_weights_after_a_push(actors):
    import ray

    cfg, rollouts, learners, sampler = actors
    before = learner_weight_stats(learners)
    assert all(weights_match(before, e) for e in rollouts.weight_stats())
    prompts = sampler.next(cfg.prompts_per_step)
    _, stats = _train_and_push(cfg, rollouts, learners, prompts, 1)
    after = learner_weight_stats(learners)
    assert stats["rl/grad_norm"] > 0 and not weights_match(before, after)
    engines = rollouts.weight_stats()
    assert len(engines) == 2 and all(weights_match(after, e) for e in engines), (after, engines)
    greedy = rollouts.generate(prompts, n=1, seed=0, greedy=True)
    hf = ray.get(learners.actors[0].greedy.remote(prompts["image"], cfg.rollout.max_tokens))
    assert greedy["completion_ids"] == hf


def test_a_killed_rollout_actor_is_replaced_and_its_share_regenerated(actors):
    import ray

    cfg, rollouts, learners, sampler = actors
    prompts = sampler.next(cfg.prompts_per_step)
    expected = rollouts.generate(prompts, cfg.group_size, seed=5)
    pending = rollouts.async_generate(prompts, cfg.group_size, seed=5)
    ray.kill(rollouts.actors[0])  # mid-step: its shard is in flight
    batch = rollouts.gather(pending, cfg.group_size, seed=5)
    assert rollouts.replaced == 1
    assert len(batch) == cfg.prompts_per_step * cfg.group_size
    assert batch["sample_id"] == expected["sample_id"]
    assert batch["completion_ids"] == expected["completion_ids"]
    # the replacement serves the current policy, and the step completes on the full batch
    current = learner_weight_stats(learners)
    assert all(weights_match(current, e) for e in rollouts.weight_stats())
    batch, _ = score_batch(batch, reward_function("type_mention"), cfg)
    stats = learners.train(batch)
    assert stats["rl/learner_tokens"] == sum(len(c) for c in batch["completion_ids"])
