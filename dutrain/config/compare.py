"""`dutrain compare`: a table and chart of MLflow runs (params that differ + chosen metrics)."""

from __future__ import annotations

from .common import TrackingConfig
from .core import ConfigError, configclass, option


@configclass
class CompareConfig:
    runs: list[str] = option(default_factory=list, doc="run ids or run names (a name: its newest "
                                                       "run); every given selector applies")
    filter: str | None = option(None, "MLflow filter string, e.g. \"params.model = 'tiny'\" or "
                                      "\"metrics.`test/type_f1` > 0.5\"")
    tags: list[str] = option(default_factory=list, doc="tag selectors KEY=VALUE (all must hold), "
                                                       "e.g. [dutrain.stage=eval]")
    metrics: list[str] = option(default_factory=list, doc="metric keys to show (default: the "
                                "headline eval/RL/SFT metrics the runs share, else any shared)")
    params: list[str] = option(default_factory=list, doc="params always shown (besides those "
                                                         "that differ)")
    ignore_params: list[str] = option(default_factory=lambda: ["tracking.run_name", "output"],
                                      doc="params never shown")
    max_runs: int = option(20, "at most this many runs (newest first) per selector", min=1)
    latest_per_name: bool = option(False, "keep only the newest selected run of each run name "
                                          "(the pipeline sets it: each rerun of a workdir logs "
                                          "its eval stages again under the same names)")
    max_metrics: int = option(12, "at most this many metrics when `metrics` is empty", min=1)
    chart: str = option("bar", "chart kind: grouped bars per metric, or a line per metric "
                               "across runs", choices=("bar", "line"))
    output: str = option("runs/compare", "folder for compare.md, compare.csv and compare.png")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow (where runs "
                                      "are searched and the compare run is logged)")

    def validate(self) -> None:
        for t in self.tags:
            if "=" not in t or not t.split("=", 1)[0]:
                raise ConfigError(f"bad value for 'tags': {t!r} (allowed: KEY=VALUE)")
