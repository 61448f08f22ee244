"""Worker groups: each owns its actors and its placement group; `async_*` methods return refs.

    learners = LearnerGroup(cfg, model_dir)            # one torch.distributed group
    rollouts = RolloutGroup(cfg, model_dir)            # one vLLM engine per actor
    pending = rollouts.async_generate(prompts, n=G, seed=s)
    batch = rollouts.gather(pending)                   # replaces dead actors, regenerates
    stats = learners.train(batch)                      # split per learner, reduced back

Placement: `separate` gives each group its own placement group (learners packed together,
rollout actors packed together); `colocated` shares one placement group whose bundle i holds
learner i and rollout actor i (on GPU: the same device, split by the fractional GPU counts).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group as make_pg
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from dutrain.config.rl import RLConfig
from dutrain.runtime.cluster import forwarded_env
from dutrain.runtime.vllm_env import engine_actor_env

from .batch import Batch
from .learner import LearnerWorker
from .rollout import RolloutWorker

ROLLOUT_ENV = engine_actor_env(bind_threads=False)


def bundle(cpus: float, gpus: float) -> dict[str, float]:
    b = {"CPU": cpus} if cpus > 0 else {}
    if gpus > 0:
        b["GPU"] = gpus
    return b or {"CPU": 0.01}


def placement_group(bundles: list[dict[str, float]], name: str, timeout_s: float = 120) -> Any:
    """A ready placement group, or a clear error naming what the cluster lacks."""
    pg = make_pg(bundles, strategy="PACK", name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(f"placement group '{name}' ({bundles}) could not be placed within "
                           f"{timeout_s:.0f}s; cluster resources: {ray.cluster_resources()}")
    return pg


def _strategy(pg: Any, index: int) -> Any:
    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)


def shared_placement_group(cfg: RLConfig) -> Any:
    """Colocated placement: bundle i fits learner i and rollout actor i together."""
    lc, rc = cfg.learner, cfg.rollout
    return placement_group([bundle(lc.cpus_per_worker + rc.cpus_per_worker,
                                   lc.gpus_per_worker + rc.gpus_per_worker)] * lc.workers,
                           "dutrain-rl-colocated")


class LearnerGroup:
    def __init__(self, cfg: RLConfig, model_dir: str, init_dir: str | None = None,
                 pg: Any = None):
        lc = cfg.learner
        self.cfg = cfg
        self.own_pg = pg is None
        self.pg = pg or placement_group(
            [bundle(lc.cpus_per_worker, lc.gpus_per_worker)] * lc.workers, "dutrain-rl-learners")
        cls = ray.remote(LearnerWorker)
        self.actors = [cls.options(num_cpus=lc.cpus_per_worker, num_gpus=lc.gpus_per_worker,
                                   scheduling_strategy=_strategy(self.pg, i),
                                   runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false",
                                                             **forwarded_env(ray)}})
                       .remote(i, lc.workers, model_dir, cfg) for i in range(lc.workers)]
        addr, port = ray.get(self.actors[0].address.remote())
        self.num_params = ray.get([a.setup.remote(addr, port, init_dir) for a in self.actors])[0]

    def async_train(self, batch: Batch) -> list[Any]:
        return [a.train_step.remote(s) for a, s in zip(self.actors, batch.split(len(self.actors)))]

    def train(self, batch: Batch) -> dict[str, float]:
        return reduce_learner_stats(ray.get(self.async_train(batch)))

    def async_weights(self) -> tuple[Any, Any]:
        """Refs to (safetensors bytes, seconds to serialise) from rank 0 (all ranks are equal)."""
        return self.actors[0].weights_payload.options(num_returns=2).remote()

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        if self.own_pg:
            ray.util.remove_placement_group(self.pg)


def reduce_learner_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-rank sums → batch metrics (token means, the global loss, the slowest rank's time)."""
    tokens = sum(p["tokens"] for p in parts) or 1.0
    out = {"rl/loss": sum(p["loss"] for p in parts),
           "rl/entropy": sum(p["entropy"] for p in parts) / tokens,
           "rl/clip_fraction": sum(p["clipped"] for p in parts) / tokens,
           "rl/is_weight": sum(p["is_weight"] for p in parts) / tokens,
           "rl/is_truncated_fraction": sum(p["is_truncated"] for p in parts) / tokens,
           "rl/mismatch_kl": sum(p["mismatch_kl"] for p in parts) / tokens,
           "rl/grad_norm": parts[0]["grad_norm"],
           "rl/learner_seconds": max(p["seconds"] for p in parts),
           "rl/learner_tokens": tokens}
    if parts[0]["has_kl"]:
        out["rl/kl"] = sum(p["kl"] for p in parts) / tokens
    return out


class RolloutGroup:
    def __init__(self, cfg: RLConfig, model_dir: str, pg: Any = None):
        rc = cfg.rollout
        self.cfg, self.model_dir = cfg, model_dir
        self.own_pg = pg is None
        self.pg = pg or placement_group(
            [bundle(rc.cpus_per_worker, rc.gpus_per_worker)] * rc.workers, "dutrain-rl-rollouts")
        self._cls = ray.remote(RolloutWorker)
        self.actors = [self._start(i) for i in range(rc.workers)]
        ray.get([a.__ray_ready__.remote() for a in self.actors])
        self.replaced = 0
        #: the weights every engine must serve: (payload ref, version); None = initial weights
        self.current: tuple[Any, int] | None = None

    def _start(self, index: int) -> Any:
        rc = self.cfg.rollout
        return self._cls.options(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker,
                                 scheduling_strategy=_strategy(self.pg, index),
                                 runtime_env={"env_vars": {**ROLLOUT_ENV, **forwarded_env(ray)}},
                                 max_restarts=0
                                 ).remote(self.model_dir, rc, self.cfg.seed)

    def replace(self, index: int) -> None:
        """A fresh actor in the dead one's bundle, loaded with the current weights."""
        try:
            ray.kill(self.actors[index])
        except Exception:  # already gone
            pass
        actor = self._start(index)
        if self.current is not None:
            payload, version = self.current
            ray.get(actor.update_weights.remote(payload, version))
        else:
            ray.get(actor.__ray_ready__.remote())
        self.actors[index] = actor
        self.replaced += 1

    # ---------------------------------------------------------------------------- generation
    def async_generate(self, prompts: Batch, n: int, seed: int,
                       greedy: bool = False) -> list[tuple[int, Any, Batch, Any]]:
        """Submit one shard per actor: [(actor index, actor, shard, ref)]."""
        shards = prompts.split(len(self.actors))
        return [(i, self.actors[i], s, self.actors[i].generate.remote(s, n, seed, greedy))
                for i, s in enumerate(shards) if len(s)]

    def gather(self, pending: list[tuple[int, Any, Batch, Any]], n: int, seed: int,
               greedy: bool = False, max_retries: int = 2) -> Batch:
        """The merged batch, in prompt order; a shard whose actor died is regenerated on a
        replacement actor (same seed, so the same completions)."""
        results = []
        for i, actor, shard, ref in pending:
            for attempt in range(max_retries + 1):
                try:
                    results.append(ray.get(ref))
                    break
                except RayActorError:
                    if attempt == max_retries:
                        raise
                    if self.actors[i] is actor:  # not yet replaced by a failed weight push
                        self.replace(i)
                    actor = self.actors[i]
                    ref = actor.generate.remote(shard, n, seed, greedy)
        merged = Batch.merge(results)
        merged.meta.update(
            version=min(r.meta["version"] for r in results),
            generate_seconds=max(r.meta["generate_seconds"] for r in results),
            tokens=sum(r.meta["tokens"] for r in results))
        return merged

    def generate(self, prompts: Batch, n: int, seed: int, greedy: bool = False) -> Batch:
        return self.gather(self.async_generate(prompts, n, seed, greedy), n, seed, greedy)

    # ------------------------------------------------------------------------------- weights
    def async_update(self, payload: Any, version: int) -> list[tuple[int, Any]]:
        self.current = (payload, version)
        return [(i, a.update_weights.remote(payload, version)) for i, a in enumerate(self.actors)]

    def wait_updates(self, pending: list[tuple[int, Any]]) -> list[float]:
        """Seconds each engine spent loading; a dead actor is replaced (it loads `current`)."""
        seconds = []
        for i, ref in pending:
            try:
                seconds.append(ray.get(ref))
            except RayActorError:
                t0 = time.perf_counter()
                self.replace(i)
                seconds.append(time.perf_counter() - t0)
        return seconds

    def weight_stats(self) -> list[dict[str, float]]:
        return ray.get([a.weight_stats.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        if self.own_pg:
            ray.util.remove_placement_group(self.pg)
