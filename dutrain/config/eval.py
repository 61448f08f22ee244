"""`dutrain eval`: score a model, a baseline or a predictions file on chosen splits of a dataset."""

from __future__ import annotations

from dutrain.schema import SPLITS

from .common import GenerationConfig, RayConfig, RewardWeights, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option
from .openai import PREFIX as OPENAI_PREFIX
from .openai import OpenAIConfig, check_spec

BASELINES = ("baseline:prior", "baseline:classical")


@configclass
class EvalConfig:
    dataset: str = option("runs/data/demo", "dataset root (local path or s3://...)")
    splits: list[str] = option(default_factory=lambda: ["test", "ood"],
                               doc=f"splits to evaluate ({', '.join(SPLITS)})")
    limit: int | None = option(None, "at most this many samples per split (a fixed subset "
                                     "spread over the split)", min=1)
    model: str | None = option(None, "model to evaluate: a checkpoint directory, s3:// URI, hub "
                                     "id, 'tiny', 'baseline:prior' or 'baseline:classical', or "
                                     "'openai:BASE_URL[#MODEL]' for any VLM behind an "
                                     "OpenAI-compatible endpoint (e.g. "
                                     "'openai:http://127.0.0.1:8000/v1'; without #MODEL the "
                                     "server's first listed model; see openai.*) (default: "
                                     "'tiny' unless 'predictions' is set)")
    predictions: str | None = option(None, "instead of a model: a JSONL file of "
                                           "{\"sample_id\": ..., \"completion\": ...} lines")
    name: str | None = option(None, "label of the evaluated system in reports (default: from "
                                    "model or predictions)")
    output: str = option("runs/eval", "folder for metrics.json, report.md, plots, completions")
    calibration_samples: int = option(400, "train rows used to calibrate the classical baseline",
                                      min=10)
    plots: bool = option(True, "draw the plots")
    rewards: RewardWeights = option(default_factory=RewardWeights, doc="reward weights")
    generation: GenerationConfig = option(default_factory=GenerationConfig, doc="model serving")
    openai: OpenAIConfig = option(default_factory=OpenAIConfig,
                                  doc="OpenAI-compatible endpoint (model=openai:...)")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow")
    storage: StorageConfig = option(default_factory=StorageConfig, doc="S3 settings")
    ray: RayConfig = option(default_factory=RayConfig, doc="Ray cluster")

    def validate(self) -> None:
        if self.model is not None and self.predictions is not None:
            raise ConfigError("set one of 'model' (a checkpoint, hub id, 'tiny', "
                              f"{' or '.join(repr(b) for b in BASELINES)}) and 'predictions' "
                              "(a JSONL file), not both")
        if self.model and self.model.startswith("baseline:") and self.model not in BASELINES:
            raise ConfigError(f"bad value for 'model': {self.model!r} (allowed baselines: "
                              f"{', '.join(BASELINES)})")
        if self.model and self.model.startswith(OPENAI_PREFIX):
            check_spec("model", self.model)
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ConfigError(f"bad value for 'splits': {list(self.splits)!r} (allowed: a "
                              f"non-empty list of {', '.join(SPLITS)})")

    @property
    def source(self) -> str:
        """The model to run ('tiny' by default), or 'predictions' when a file is given."""
        if self.predictions is not None:
            return "predictions"
        return self.model or "tiny"

    @property
    def system(self) -> str:
        """The evaluated system's label (MLflow param `model`)."""
        if self.name:
            return self.name
        return f"predictions:{self.predictions}" if self.predictions is not None else self.source
