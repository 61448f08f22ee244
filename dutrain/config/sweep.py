"""`dutrain sweep`: a base verb and its config, a search space over its keys, run on Ray Tune.

    verb: sft                                  # any stage verb, or pipeline
    base: workflows/configs/sft/demo.yaml      # that verb's YAML (as its --config)
    overrides: {max_steps: 60}                 # applied to every trial (that verb's keys)
    space:                                     # key → one distribution
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      batch_size: {grid: [8, 16]}
      target: {choice: [reasoning, answer]}
    num_samples: 2                             # random draws per grid point
    metric: val/loss
    mode: min

The space is checked against the base verb's schema, and every trial's config is built and
validated, before Ray starts (`dutrain.sweep.space`).
"""

from __future__ import annotations

from typing import Any

from .common import RayConfig, TrackingConfig
from .core import ConfigError, configclass, option

#: verbs a sweep can run: every stage verb and the pipeline
SWEEPABLE = ("generate", "sft", "offline", "rl", "eval", "restore", "pipeline")


@configclass
class EarlyStopConfig:
    enabled: bool = option(False, "stop poor trials early with ASHA on the sweep metric, read "
                                  "from the trial's MLflow run while the stage trains (stages "
                                  "that log it during training: sft val/loss, rl reward/...)")
    grace_period: int = option(2, "reports of the metric a trial gets before it may be stopped",
                               min=1)
    reduction_factor: float = option(2.0, "ASHA's halving rate", min=1.01)
    max_t: int = option(100, "ASHA's horizon in metric reports: a trial that reaches it is "
                             "stopped, so keep it above the stage's number of reports", min=1)
    poll_seconds: float = option(2.0, "how often a trial reads its metric from MLflow", min=0.1)


@configclass
class SweepConfig:
    verb: str = option("eval", "the verb each trial runs (its runner, in the trial's process)",
                       choices=SWEEPABLE)
    base: str | None = option(None, "YAML config of that verb (as `dutrain VERB --config`)")
    overrides: dict[str, Any] = option(default_factory=dict, doc="that verb's keys set in every "
                                       "trial (dotted or nested), on top of `base`")
    space: dict[str, Any] = option(default_factory=dict, doc="key → {grid: [..]} | {choice: "
                                   "[..]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}; "
                                   "dotted keys of the verb's config")
    num_samples: int = option(1, "random draws per grid point (grid-only spaces: repeats)",
                              min=1)
    seed: int = option(0, "seed of the random draws (the same seed gives the same trials)")
    max_concurrent: int = option(1, "trials running at once", min=1)
    cpus_per_trial: float = option(1.0, "CPUs Ray reserves for a trial's driver (its stage's "
                                        "own workers reserve theirs; 0: none, so its Ray Data "
                                        "and Train workers may use every CPU)", min=0)
    gpus_per_trial: float = option(0.0, "GPUs Ray reserves for a trial's driver", min=0)
    metric: str | None = option(None, "the trial run's MLflow metric that ranks trials, e.g. "
                                      "val/loss, test/type_f1 (default: none; the table is "
                                      "unsorted)")
    mode: str = option("max", "whether a higher or lower metric is better",
                       choices=("max", "min"))
    reference_metric: str | None = option(None, "a second metric of the trial runs drawn beside "
                                                "`metric` in the chart against each parameter "
                                                "(e.g. the bound a parameter sets on the metric)")
    early_stop: EarlyStopConfig = option(default_factory=EarlyStopConfig,
                                         doc="ASHA early stopping")
    retry_failed: bool = option(True, "a rerun runs trials that failed before again (finished "
                                      "and early-stopped ones are never rerun)")
    stop_after: int | None = option(None, "end the sweep once this many trials have finished "
                                          "in this run, as if interrupted (the others keep for "
                                          "a rerun without it; tests, first tries)", min=1)
    output: str = option("runs/sweep", "folder: trials/<name>/ (each trial's own output), "
                                       "sweep.md, sweep.csv, sweep.png")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow: the sweep's "
                                      "parent run and one child run per trial")
    ray: RayConfig = option(default_factory=RayConfig, doc="the Ray cluster the trials run on")

    def validate(self) -> None:
        if not self.space:
            raise ConfigError("missing value for 'space' (allowed: a mapping of the verb's "
                              "keys to {grid|choice: [...]} or {uniform|loguniform: [lo, hi]})")
        if not self.tracking.enabled:
            raise ConfigError("bad value for 'tracking.enabled': False (allowed: true; a sweep "
                              "reads each trial's metrics from its MLflow run)")
        if self.early_stop.enabled and not self.metric:
            raise ConfigError("'early_stop.enabled' needs 'metric' (the metric ASHA compares)")
        if "://" in self.output:
            raise ConfigError(f"bad value for 'output': {self.output!r} (allowed: a local "
                              f"path; point stage outputs at s3:// through 'overrides')")
