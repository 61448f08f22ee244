"""`dutrain rl`: GRPO on the structured rewards, vLLM rollout actors and torch learner actors."""

from __future__ import annotations

from dutrain.schema import SPLITS, TAXONOMY

from .common import RayConfig, RewardWeights, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option

DTYPES = ("float32", "bfloat16", "float16")


@configclass
class RewardConfig:
    kind: str = option("structured", "structured: the §6 rewards (dutrain.rewards.score); "
                                     "type_mention: toy reward, 1 when the completion names "
                                     "`target_type` (for tests and smoke runs)",
                       choices=("structured", "type_mention"))
    weights: RewardWeights = option(default_factory=RewardWeights, doc="weights of `total`")
    target_type: str = option("haze", "type the toy reward asks for (kind=type_mention)")


@configclass
class RolloutConfig:
    workers: int = option(1, "rollout actors, each holding one vLLM engine", min=1)
    cpus_per_worker: float = option(1.0, "CPUs per rollout actor", min=0)
    gpus_per_worker: float = option(0.0, "GPUs per rollout actor (0 on CPU)", min=0)
    temperature: float = option(1.0, "sampling temperature (> 0: G samples per prompt)", min=0)
    top_p: float = option(1.0, "nucleus sampling; keep 1.0 so rollout and learner log-probs "
                               "describe the same distribution", min=0, max=1)
    max_tokens: int = option(256, "completion length limit (tokens)", min=1)
    structured: bool = option(False, "constrain decoding to the answer grammar")
    dtype: str = option("float32", "engine dtype", choices=DTYPES)
    max_model_len: int = option(1024, "engine context length (tokens)", min=64)
    max_num_seqs: int = option(64, "sequences the engine batches at once", min=1)
    gpu_memory_utilization: float = option(0.5, "share of GPU memory vLLM may take (GPU only)",
                                           min=0.05, max=0.95)


@configclass
class LearnerConfig:
    workers: int = option(2, "learner actors (one torch.distributed process group, DDP)", min=1)
    cpus_per_worker: float = option(1.0, "CPUs per learner actor", min=0)
    gpus_per_worker: float = option(0.0, "GPUs per learner actor (0 on CPU)", min=0)
    backend: str = option("auto", "process-group backend (auto: nccl with GPUs, else gloo)",
                          choices=("auto", "gloo", "nccl"))
    dtype: str = option("float32", "parameter dtype of the policy", choices=DTYPES)
    lr: float = option(1e-5, "AdamW learning rate", min=0)
    warmup_steps: int = option(0, "linear learning-rate warm-up over the first N optimiser steps "
                               "(a cold AdamW's first step moves every weight by ~lr whatever "
                               "its gradient: docs/rl.md)", min=0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0)
    grad_clip: float = option(1.0, "max global gradient norm (0: no clipping)", min=0)
    micro_batch_size: int = option(8, "sequences per forward/backward on one learner", min=1)
    epochs: int = option(1, "optimisation passes over each batch (>1: PPO-style reuse)", min=1)
    gradient_checkpointing: bool = option(False, "recompute activations (large models)")


@configclass
class LossConfig:
    norm: str = option("dapo", "loss normalisation: grpo (mean per sequence, then over "
                               "sequences), dapo (mean over all tokens of the batch), dr_grpo "
                               "(sum over tokens / (sequences x max_tokens))",
                       choices=("grpo", "dapo", "dr_grpo"))
    scale_rewards: bool = option(True, "divide group advantages by the group's reward std "
                                       "(GRPO); false for Dr.GRPO")
    clip_low: float = option(0.2, "PPO ratio clip below 1 (epsilon_low)", min=0, max=1)
    clip_high: float = option(0.28, "PPO ratio clip above 1 (epsilon_high; DAPO clip-higher)",
                              min=0)
    kl_coef: float = option(0.0, "weight of the k3 KL to the frozen initial policy (0: no "
                                 "reference model, rl/kl not logged)", min=0)
    importance_sampling: str = option("truncated", "correct rollout/learner log-prob mismatch "
                                                   "and staleness: truncated (TIS) or none",
                                      choices=("truncated", "none"))
    is_cap: float = option(2.0, "upper bound of the truncated importance weight", min=1)


@configclass
class RLConfig:
    model: str = option("tiny", "initial policy: a checkpoint directory (the SFT output), "
                                "s3:// URI, hub id or 'tiny'")
    dataset: str = option("runs/data/demo", "dataset root (local path or s3://...)")
    output: str = option("runs/rl", "storage path of the run (local or s3://): "
                                    "checkpoints/step_N/ and final/ (HF model)")
    steps: int = option(20, "optimisation steps", min=1)
    prompts_per_step: int = option(8, "prompts (images) per step", min=1)
    group_size: int = option(4, "completions per prompt (G)", min=2)
    train_limit: int | None = option(None, "use at most this many train rows (a fixed "
                                           "subset spread over the split)", min=1)
    seed: int = option(0, "seed of prompt order, sampling and learner RNG", min=0)
    mode: str = option("sync", "sync: generate then learn; async: rollouts for step t+1 run "
                               "while the learner trains on step t", choices=("sync", "async"))
    max_staleness: int = option(1, "async: most policy versions a batch may lag the learner",
                                min=1)
    placement: str = option("separate", "separate: learners and rollout actors on their own "
                                         "bundles; colocated: learner i and rollout i share a "
                                         "bundle (needs as many of each)",
                            choices=("separate", "colocated"))
    checkpoint_every: int = option(10, "save a checkpoint every N steps (0: only at the end)",
                                   min=0)
    resume: bool = option(False, "continue from the latest checkpoint under `output`")
    eval_every: int = option(5, "score greedy completions on held-out prompts every N steps "
                                "(0: never)", min=0)
    eval_split: str = option("val", "split of the held-out prompts",
                             choices=SPLITS)
    eval_prompts: int = option(16, "held-out prompts (a fixed subset spread over the split)", min=1)
    eval_sampling: str = option("greedy", "held-out completions: greedy (one per prompt) or "
                                          "policy (group_size samples per prompt at the "
                                          "rollout temperature, fixed seeds)",
                                choices=("greedy", "policy"))
    progress: bool = option(True, "show a progress bar (step, reward, step seconds) on stderr")
    samples_to_log: int = option(8, "completions per step written to samples/", min=0)
    reward: RewardConfig = option(default_factory=RewardConfig, doc="reward")
    rollout: RolloutConfig = option(default_factory=RolloutConfig, doc="rollout actors")
    learner: LearnerConfig = option(default_factory=LearnerConfig, doc="learner actors")
    loss: LossConfig = option(default_factory=LossConfig, doc="GRPO objective")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow")
    storage: StorageConfig = option(default_factory=StorageConfig, doc="S3 settings")
    ray: RayConfig = option(default_factory=RayConfig, doc="Ray cluster")

    def validate(self) -> None:
        seqs = self.prompts_per_step * self.group_size
        if seqs % self.learner.workers:
            raise ConfigError(f"bad value for 'learner.workers': {self.learner.workers} (allowed: "
                              f"a divisor of prompts_per_step x group_size = {seqs}, so every "
                              f"learner gets the same number of sequences)")
        if self.rollout.workers > self.prompts_per_step:
            raise ConfigError(f"bad value for 'rollout.workers': {self.rollout.workers} "
                              f"(allowed: at most prompts_per_step = {self.prompts_per_step})")
        if self.rollout.temperature <= 0:
            raise ConfigError("bad value for 'rollout.temperature': must be > 0 (allowed: a "
                              "number > 0; GRPO samples several completions per prompt)")
        if self.placement == "colocated" and self.rollout.workers != self.learner.workers:
            raise ConfigError(f"placement 'colocated' pairs learner i with rollout i: set "
                              f"'rollout.workers' = 'learner.workers' (got "
                              f"{self.rollout.workers} and {self.learner.workers})")
        if self.reward.kind == "type_mention" and self.reward.target_type not in TAXONOMY:
            raise ConfigError(f"bad value for 'reward.target_type': {self.reward.target_type!r} "
                              f"(allowed: {', '.join(TAXONOMY)})")
        if self.learner.backend == "nccl" and self.learner.gpus_per_worker <= 0:
            raise ConfigError("'learner.backend' nccl needs 'learner.gpus_per_worker' > 0")

    @property
    def staleness_bound(self) -> int:
        return self.max_staleness if self.mode == "async" else 0
