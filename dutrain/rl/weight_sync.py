"""Weight sync: after each update, every rollout engine serves exactly the learner's weights.

The learner's rank 0 serialises its state dict to safetensors bytes (`weights_payload`); the
bytes go through Ray's object store straight to every rollout actor (never through the
driver), which reloads them in place (`VLLMEngine.update_weights`: vLLM's `reload_weights`
through `collective_rpc`, then the encoder and prefix caches are reset — a cached image
embedding from the old weights would otherwise be reused or crash the engine).

`rl/sync_seconds` = serialise time + the slowest engine's load time (both measured where they
run). In sync mode the driver also waits for the push (`rl/sync_wall_seconds`); in async mode the
push queues behind the generation in flight on each actor and is collected a step later.

`weights_match` compares a layout-independent checksum (non-zero count, Σw, Σw²) read from every
engine with the learner's: the engines' numbers come from the weights they compute with (on CPU,
packed linear layers are read back through their own kernel).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import ray

from .groups import LearnerGroup, RolloutGroup


@dataclass
class PendingSync:
    version: int
    started: float
    serialize_ref: Any
    updates: list[tuple[int, Any]]


def push_weights(learners: LearnerGroup, rollouts: RolloutGroup, version: int) -> PendingSync:
    """Start pushing the learner's weights (as policy `version`) to every rollout engine."""
    t0 = time.perf_counter()
    payload, seconds = learners.async_weights()
    return PendingSync(version, t0, seconds, rollouts.async_update(payload, version))


def finish_sync(rollouts: RolloutGroup, pending: PendingSync) -> dict[str, float]:
    """Wait for a push; its timings as metrics."""
    update_s = rollouts.wait_updates(pending.updates)
    serialize_s = float(ray.get(pending.serialize_ref))
    return {"rl/sync_seconds": serialize_s + max(update_s),
            "rl/sync_serialize_seconds": serialize_s,
            "rl/sync_load_seconds": max(update_s),
            "rl/sync_wall_seconds": time.perf_counter() - pending.started}


def learner_weight_stats(learners: LearnerGroup) -> dict[str, float]:
    return ray.get(learners.actors[0].weight_stats.remote())


def weights_match(learner: dict[str, float], engine: dict[str, float], rtol: float = 1e-6) -> bool:
    """Same non-zero count and Σw, Σw² equal to `rtol` (float64 sums in different orders)."""
    if int(learner["nonzero"]) != int(engine["nonzero"]):
        return False
    return all(math.isclose(learner[k], engine[k], rel_tol=rtol, abs_tol=rtol)
               for k in ("sum", "sum_sq"))
