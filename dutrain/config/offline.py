"""Config of `dutrain offline`: sample a checkpoint K times per train image, score the samples
with the structured reward, train on preference pairs (DPO) or on the best sample per image
(rejection-sampling fine-tuning) — docs/offline.md."""

from __future__ import annotations

from .common import GenerationConfig, RayConfig, RewardWeights, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option

METHODS = ("dpo", "rft")


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
    # --- training, in Ray Train workers (docs/offline.md)
    method: str = option("dpo", "'dpo': TRL's DPOTrainer on the pairs; 'rft': rejection-sampling "
                                "fine-tuning, the SFT stage's loop on each image's best sample",
                         choices=METHODS)
    rft_min_reward: float = option(0.5, "rft: an image's best sample is trained on only if its "
                                        "total reward is at least this", min=0.0)
    rft_val_target: str = option("reasoning", "rft: target text of the val rows whose loss the "
                                              "SFT loop reports (as the SFT stage's `target`)",
                                 choices=("reasoning", "answer"))
    val_samples: int = option(32, "rft: val rows for the validation loss", min=1)
    beta: float = option(0.1, "dpo: temperature of the implicit reward", min=0.0)
    sft_weight: float = option(0.0, "dpo: weight of a negative log-likelihood term on the chosen "
                                    "completion beside the DPO loss (TRL loss_type 'sft', as in "
                                    "RPO); keeps the policy's format while the margin grows",
                               min=0.0)
    lr: float = option(1e-5, "AdamW learning rate", min=0.0)
    epochs: int = option(1, "passes over the pairs (dpo) or best samples (rft)", min=1)
    batch_size: int = option(4, "pairs (dpo) or samples (rft) per worker per optimiser step",
                             min=1)
    max_steps: int | None = option(None, "stop after this many optimiser steps (default: "
                                         "`epochs` passes)", min=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", min=0.0)
    num_workers: int = option(1, "Ray Train workers (data-parallel replicas)", min=1)
    use_gpu: bool = option(False, "one GPU per worker; else CPU workers (gloo)")
    cpus_per_worker: float = option(2.0, "CPUs reserved per worker (its torch threads)", min=1.0)
    seed: int = option(0, "seed of pair order", min=0)
    checkpoint_every: int = option(50, "optimiser steps between checkpoints (output/train)",
                                   min=1)
    keep_checkpoints: int = option(2, "most recent checkpoints kept", min=1)
    resume: bool = option(True, "rerun on the same output: reuse complete samples and continue "
                                "training from the latest checkpoint (false: start over)")
    stop_at_step: int | None = option(None, "stop after this step as if interrupted (tests, "
                                            "staged runs); a rerun continues", min=1)
    max_failures: int = option(1, "worker crashes retried from the last checkpoint", min=0)
    progress: bool = option(True, "show progress bars (sampling, training) on stderr")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow")
    storage: StorageConfig = option(default_factory=StorageConfig, doc="S3 settings")
    ray: RayConfig = option(default_factory=RayConfig, doc="Ray cluster")

    def validate(self) -> None:
        if self.generation.temperature <= 0:
            raise ConfigError("bad value for 'generation.temperature': must be > 0 (K samples "
                              "of one image at temperature 0 are identical)")
