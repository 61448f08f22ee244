"""The verbs `dutrain` offers: name → (config class, runner, one-line help).

Imports are lazy ("module:attr" strings) so `dutrain --help` starts fast. Only verbs that work
are listed here; each stage adds its line when it lands.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Verb:
    name: str
    config: str  # "module:Class"
    runner: str  # "module:function" taking the validated config
    help: str

    def config_class(self) -> type:
        return _load(self.config)

    def run_fn(self) -> Callable[[Any], Any]:
        return _load(self.runner)


def _load(path: str) -> Any:
    mod, attr = path.split(":")
    return getattr(importlib.import_module(mod), attr)


VERBS: dict[str, Verb] = {v.name: v for v in [
    Verb("pipeline", "dutrain.config.pipeline:PipelineConfig", "dutrain.pipeline:run",
         "generate → sft → [offline] → rl → eval → restore → compare, one parent MLflow run"),
    Verb("generate", "dutrain.config.generate:GenerateConfig", "dutrain.data.generate:run",
         "synthesize clean/degraded pairs with exact annotations (Ray Data → Parquet)"),
    Verb("sft", "dutrain.config.sft:SFTConfig", "dutrain.sft.run:run",
         "supervised fine-tuning of the VLM on Ray Train (checkpoints, best/, final/)"),
    Verb("submit", "dutrain.config.submit:SubmitConfig", "dutrain.submit:run",
         "run a verb as a Ray job on a cluster; --status/--logs/--stop ID"),
    Verb("rl", "dutrain.config.rl:RLConfig", "dutrain.rl.controller:run",
         "GRPO on the structured rewards: vLLM rollout actors + DDP learner actors on Ray"),
    Verb("offline", "dutrain.config.offline:OfflineConfig", "dutrain.offline.run:run",
         "offline RL: sample a checkpoint K times per image, score, then DPO on preference "
         "pairs (TRL) or fine-tune on the best samples (method=rft)"),
    Verb("eval", "dutrain.config.eval:EvalConfig", "dutrain.evaluate.run:run_eval",
         "score a model, a baseline or a predictions file: metrics, report, plots"),
    Verb("compare", "dutrain.config.compare:CompareConfig", "dutrain.tracking.compare:run_compare",
         "tabulate and chart MLflow runs: params that differ and chosen metrics"),
    Verb("restore", "dutrain.config.restore:RestoreConfig", "dutrain.restore.run:run",
         "restore images with the physics an annotation names (given, true or predicted)"),
    Verb("sweep", "dutrain.config.sweep:SweepConfig", "dutrain.sweep.run:run",
         "a search space over any verb's keys as Ray Tune trials: one MLflow parent run, a "
         "child per trial, resumable, a sorted table and charts"),
]}

# Listed in the order a user meets them (docs/design.md §7).
_ORDER = ("generate", "sft", "offline", "rl", "eval", "restore", "compare", "pipeline", "sweep",
          "submit")
VERBS = {k: VERBS[k] for k in sorted(VERBS, key=lambda k: _ORDER.index(k) if k in _ORDER else 99)}
