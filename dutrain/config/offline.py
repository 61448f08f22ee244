"""Config of `dutrain offline`: sample a checkpoint K times per train image, score the samples
with the structured reward, train on preference pairs (DPO) — docs/offline.md."""

from __future__ import annotations

from .common import GenerationConfig, RayConfig, RewardWeights, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option


def _sampling() -> GenerationConfig:
    return GenerationConfig(temperature=1.0, structured=True, max_tokens=320)


@configclass
class OfflineConfig:
    model: str = option("runs/sft/demo/final", "policy to sample and train: a checkpoint "
                                               "directory (the SFT output), s3:// URI, hub id "
                                               "or 'tiny'")
    dataset: str = option("runs/data/demo", "dataset root (local path or s3://...)")
    output: str = option("runs/offline/demo", "run folder: samples/ (Parquet: every sample with "
                                              "its rewards), pairs/ and final/ (HF model)")
    samples_per_prompt: int = option(4, "completions sampled per train image (K >= 2)", min=2)
    train_limit: int | None = option(None, "use at most this many train rows (a fixed subset "
                                           "spread over the split)", min=1)
    generation: GenerationConfig = option(default_factory=_sampling,
                                          doc="sampling (vLLM actors); temperature must be > 0")
    rewards: RewardWeights = option(default_factory=RewardWeights, doc="reward weights")
    min_margin: float = option(0.05, "least difference in total reward between chosen and "
                                     "rejected (ties are always dropped)", min=0.0)
    max_pairs_per_prompt: int = option(2, "pairs kept per image, widest margins first (0: all)",
                                       min=0)
    # --- DPO with TRL's DPOTrainer in the driver process (docs/offline.md)
    beta: float = option(0.1, "DPO temperature of the implicit reward", min=0.0)
    lr: float = option(1e-5, "AdamW learning rate", min=0.0)
    epochs: int = option(1, "passes over the pairs", min=1)
    batch_size: int = option(4, "pairs per optimiser step", min=1)
    max_steps: int | None = option(None, "stop after this many optimiser steps", min=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", min=0.0)
    threads: int = option(2, "torch threads of the in-process trainer", min=1)
    seed: int = option(0, "seed of pair order", min=0)
    progress: bool = option(True, "show a progress bar on stderr")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow")
    storage: StorageConfig = option(default_factory=StorageConfig, doc="S3 settings")
    ray: RayConfig = option(default_factory=RayConfig, doc="Ray cluster")

    def validate(self) -> None:
        if self.generation.temperature <= 0:
            raise ConfigError("bad value for 'generation.temperature': must be > 0 (K samples "
                              "of one image at temperature 0 are identical)")
