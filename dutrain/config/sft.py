"""Config of `dutrain sft`: supervised fine-tuning of a Qwen2-VL-family model on Ray Train."""

from __future__ import annotations

from dutrain.schema.taxonomy import MAX_GRID_FACTOR

from .common import RayConfig, StorageConfig, TrackingConfig
from .core import ConfigError, configclass, option, to_dict

#: initialisations of the tiny model's patch embedding (`dutrain.models.tiny`)
PATCH_INITS = ("random", "dct", "dct_block")
#: prompt modes (`dutrain.models.prompts`): the instruction alone, or with the measured cues of
#: the image (the measurement tool's line); a property of the trained model, saved with it
PROMPT_MODES = ("plain", "cues")


@configclass
class TinyModelConfig:
    """Sizes of the tiny model built when `model: tiny`: the one home of their defaults, which
    `dutrain.models.tiny.TinySpec` takes from here."""

    hidden_size: int = option(128, "text hidden size", min=16)
    intermediate_size: int = option(512, "text MLP size", min=16)
    num_layers: int = option(2, "text decoder layers", min=1)
    num_heads: int = option(4, "text attention heads", min=1)
    num_kv_heads: int = option(2, "text key/value heads", min=1)
    mrope_section: list[int] = option(default_factory=lambda: [4, 6, 6],
                                      doc="multimodal RoPE split (sums to head_dim / 2)")
    vision_depth: int = option(2, "vision transformer blocks", min=1)
    vision_embed_dim: int = option(64, "vision width", min=8)
    vision_heads: int = option(4, "vision attention heads", min=1)
    patch_size: int = option(14, "vision patch side, px", min=2)
    merge_size: int = option(2, "patches merged per side into one image token", min=1)
    min_image_side: int = option(56, "images smaller than this² px are upscaled", min=8)
    max_image_side: int = option(224, "images larger than this² px are downscaled", min=8)
    vocab_merges: int = option(700, "BPE merges learned on the answer/reasoning corpus", min=0)
    seed: int = option(0, "seed of the random weights", min=0)
    patch_init: str = option("random", "patch embedding init: Qwen's random one, a bank of 2-D "
                                       "DCT filters ('dct'), or DCT plus JPEG block-boundary "
                                       "filters ('dct_block')",
                             choices=PATCH_INITS)

    def spec(self) -> "object":
        # lazy: dutrain.models.tiny imports this module (cycle) and numpy; config stays light
        # for `dutrain --help`
        from dutrain.models.tiny import TinySpec
        d = to_dict(self)
        d["mrope_section"] = tuple(d["mrope_section"])
        return TinySpec(**d)


@configclass
class SFTConfig:
    dataset: str = option("runs/data/demo", "dataset root (local path or s3://…), from "
                                            "`dutrain generate`")
    output: str = option("runs/sft/demo", "run folder (local or s3://…): Ray checkpoints under "
                                          "train/, best/ and final/ as Hugging Face models")
    model: str = option("tiny", "start from: 'tiny', a local HF directory, s3:// prefix or hub "
                                "id (e.g. Qwen/Qwen2.5-VL-3B-Instruct)")
    tiny: TinyModelConfig = option(default_factory=TinyModelConfig, doc="tiny model sizes")
    target: str = option("reasoning", "assistant target: '<think>' cues then '<answer>' "
                                      "('reasoning'), or the answer alone ('answer')",
                         choices=("reasoning", "answer"))
    prompt: str = option("plain", "prompt mode, saved with the model (dutrain_prompt.json) and "
                                  "read from it by every later stage: the instruction alone "
                                  "('plain'), or also the cues measured on the image, which the "
                                  "'<think>' then no longer restates ('cues')",
                         choices=PROMPT_MODES)
    grid_factor: int = option(1, "answer grid: the targets' values are snapped to every key's "
                                 "grid this many times coarser (1: the contract's grid); saved "
                                 "with the model like `prompt`, so later stages parse and score "
                                 "its answers on it", min=1, max=MAX_GRID_FACTOR)
    # --- scale
    num_workers: int = option(2, "Ray Train workers (data-parallel replicas)", min=1)
    use_gpu: bool = option(False, "one GPU per worker (NCCL); else CPU workers (gloo)")
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker", min=0.0)
    # --- optimisation
    batch_size: int = option(16, "samples per worker per micro-step", min=1)
    grad_accum: int = option(1, "micro-steps per optimiser step", min=1)
    max_steps: int = option(300, "optimiser steps (sets the LR schedule)", min=1)
    lr: float = option(1e-3, "peak learning rate (AdamW)", min=0.0)
    warmup_steps: int = option(20, "linear warm-up steps", min=0)
    min_lr_ratio: float = option(0.1, "cosine decay floor as a fraction of lr", min=0.0, max=1.0)
    vision_lr_scale: float = option(1.0, "learning rate of the vision tower as a fraction of lr "
                                         "(< 1 keeps its initial features longer)", min=0.0)
    aux_loss: float = option(0.0, "weight of the auxiliary perception loss: a linear head on "
                                  "each image's pooled vision tokens predicts its degradation "
                                  "types (BCE), added to the answer loss; the head is not saved "
                                  "with the model (0: off; docs/sft.md)", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", min=0.0)
    dtype: str = option("auto", "training precision: auto = bf16 autocast on GPU, fp32 on CPU",
                        choices=("auto", "float32", "bfloat16"))
    gradient_checkpointing: bool = option(False, "recompute activations (large models on GPU)")
    seed: int = option(0, "seed of data order and initial weights", min=0)
    train_limit: int | None = option(None, "use at most this many train rows", min=1)
    # --- evaluation, logging, checkpoints
    progress: bool = option(True, "show a progress bar (step, train and val loss) on stderr")
    log_every: int = option(10, "steps between train metrics", min=1)
    eval_every: int = option(100, "steps between validation losses (and best/ updates)", min=1)
    val_samples: int = option(128, "val rows for the validation loss", min=1)
    checkpoint_every: int = option(100, "steps between checkpoints", min=1)
    keep_checkpoints: int = option(2, "most recent checkpoints kept", min=1)
    final_eval_samples: int = option(64, "val images generated and scored at the end "
                                         "(format validity, type F1)", min=0)
    sample_completions: int = option(4, "completions with images logged as artifacts", min=0)
    max_new_tokens: int = option(320, "generation limit of the final evaluation", min=8)
    resume: bool = option(True, "continue from the latest checkpoint in `output` if there is "
                                "one (false: start over, deleting it)")
    max_failures: int = option(1, "worker crashes retried from the last checkpoint", min=0)
    stop_at_step: int | None = option(None, "stop after this step as if interrupted (tests, "
                                            "staged runs); resume continues", min=1)
    storage: StorageConfig = option(default_factory=StorageConfig, doc="S3 settings")
    tracking: TrackingConfig = option(default_factory=TrackingConfig, doc="MLflow")
    ray: RayConfig = option(default_factory=RayConfig, doc="Ray cluster")

    def validate(self) -> None:
        if self.model == "tiny":
            try:
                self.tiny.spec().validate()
            except ValueError as exc:
                raise ConfigError(f"bad value in 'tiny': {exc}") from None
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(f"bad value for 'warmup_steps': {self.warmup_steps} (allowed: less "
                              f"than max_steps = {self.max_steps})")
