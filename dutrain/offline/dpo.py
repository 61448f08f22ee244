"""DPO in Ray Train workers: TRL's `DPOTrainer` inside `TorchTrainer` (docs/offline.md).

Each worker gets the whole pairs dataset (prompt_id, chosen, rejected, degraded PNG); the
Hugging Face Trainer under DPOTrainer shards it across the workers itself (accelerate reads the
RANK / WORLD_SIZE Ray Train sets and reuses its process group). Checkpoints are the Trainer's own
(model, optimiser, scheduler, RNG, trainer_state.json), reported to Ray Train by Ray's
`RayTrainReportCallback` every `checkpoint_every` steps; a rerun on the same output gets the
latest back from `ray.train.get_checkpoint()` and continues with `resume_from_checkpoint`. The
reference model is the starting model: TRL loads it from the policy's `_name_or_path` (the
starting directory), before the checkpoint's weights are loaded into the policy.

Rank 0 logs TRL's per-step numbers to the stage's MLflow run (`dpo/...`), posts its step to the
driver's progress bar, and at the end publishes `output/final` (HF model + dutrain_offline.json).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
from transformers import TrainerCallback

from dutrain.config import load_config
from dutrain.config.offline import OfflineConfig
from dutrain.io.dataset import decode_png
from dutrain.models import (
    answer_grid,
    encode_images,
    encode_sft,
    image_cues,
    load_model,
    load_processor,
    messages,
    prompt_mode,
    to_pil,
)
from dutrain.sft.loop import publish, save_hf, unwrap
from dutrain.tracking import Tracker
from dutrain.tracking.progress import post_step

SUMMARY_FILE = "dutrain_offline.json"


# ------------------------------------------------------------------------------ log-prob margin

def _completion_logps(model: Any, batch: dict[str, Any]) -> list[float]:
    labels = batch.pop("labels")
    logits = model(**batch).logits[:, :-1].float()
    tgt = labels[:, 1:]
    mask = tgt != -100
    lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
    return (lp * mask).sum(-1).tolist()


def logp_margin(model: Any, processor: Any, images: list[Any], chosen: list[str],
                rejected: list[str], batch_size: int = 8, prompt: str = "plain",
                cues: list[Any] | None = None) -> float:
    """Mean log π(chosen) − log π(rejected) over pairs: the sum of each completion's token
    log-probs (target + end of turn, `encode_sft`'s labels); each image is processed once for
    both completions. `prompt`: the model's prompt mode (`cues`: the images' measured cues)."""
    model.eval()
    margins: list[float] = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            ims = images[i:i + batch_size]
            vision = encode_images(processor, ims)
            cs = None if prompt == "plain" else (
                cues[i:i + batch_size] if cues is not None else [image_cues(im) for im in ims])
            c = _completion_logps(model, encode_sft(processor, ims, chosen[i:i + batch_size],
                                                    vision, mode=prompt, cues=cs))
            r = _completion_logps(model, encode_sft(processor, ims, rejected[i:i + batch_size],
                                                    vision, mode=prompt, cues=cs))
            margins += [a - b for a, b in zip(c, r)]
    return float(np.mean(margins))


# ------------------------------------------------------------------------------ callbacks

class StageCallback(TrainerCallback):
    """Rank 0: TRL's logs to MLflow as `dpo/...` and the step to the driver's progress bar; every
    rank: stop (after a checkpoint) at `stop_at_step`, as if interrupted."""

    def __init__(self, tracker: Tracker, board: str | None, rank: int, stop_at: int | None):
        self.tracker, self.board, self.rank, self.stop_at = tracker, board, rank, stop_at

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self.rank != 0 or not logs:
            return
        m = {f"dpo/{k}": float(v) for k, v in logs.items()
             if k not in ("step", "epoch") and isinstance(v, (int, float))}
        self.tracker.log_metrics(m, step=state.global_step)
        post_step(self.board, state.global_step, m)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_save = True
            control.should_training_stop = True


# ------------------------------------------------------------------------------ the worker

def load_pairs(iterator: Any) -> list[dict[str, Any]]:
    """The pairs of the Ray dataset shard, in a fixed order (independent of block layout)."""
    rows = [dict(r) for r in iterator.iter_rows()]
    rows.sort(key=lambda r: (str(r["prompt_id"]), int(r["chosen_index"]),
                             int(r["rejected_index"])))
    return rows


def dpo_dataset(pairs: list[dict[str, Any]], images: dict[str, Any],
                cues: dict[str, Any] | None = None) -> Any:
    """TRL's conversational vision preference format: images, prompt, chosen, rejected.
    `cues` (prompt_id → measured cues): the prompts of a `prompt: cues` model."""
    from datasets import Dataset

    def turn(text: str) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return Dataset.from_dict({
        "images": [[to_pil(images[p["prompt_id"]])] for p in pairs],
        "prompt": [messages(cues=cues[p["prompt_id"]] if cues is not None else None)
                   for p in pairs],
        "chosen": [turn(p["chosen"]) for p in pairs],
        "rejected": [turn(p["rejected"]) for p in pairs]})


def dpo_args(cfg: OfflineConfig, output_dir: str) -> Any:
    from trl import DPOConfig

    # loss_type 'sft' adds the chosen completion's NLL (RPO), weighted against the sigmoid loss
    losses = (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, cfg.sft_weight])
              if cfg.sft_weight > 0 else dict(loss_type=["sigmoid"]))
    return DPOConfig(output_dir=output_dir, beta=cfg.beta, learning_rate=cfg.lr, **losses,
                     num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
                     per_device_train_batch_size=cfg.batch_size,
                     max_grad_norm=cfg.max_grad_norm or 1e9, seed=cfg.seed, data_seed=cfg.seed,
                     logging_steps=1, report_to=[], save_strategy="steps",
                     save_steps=cfg.checkpoint_every, save_total_limit=1,
                     use_cpu=not cfg.use_gpu, bf16=False, disable_tqdm=True,
                     dataloader_num_workers=0)


def dpo_trainer_class() -> type:
    """TRL's DPOTrainer whose resume loads the checkpoint's weights through `load_model`.

    transformers 5.19 writes Qwen2-VL checkpoints under the legacy key names (`model.layers.*`,
    `visual.*`) while the module's own are `model.language_model.*` / `model.visual.*`, and the
    Trainer's `_load_from_checkpoint` loads the file with `strict=False`: every key misses, the
    policy silently restarts from its initial weights (found by test_offline's resume test: the
    loss after resuming was log 2, policy = reference). `load_model` applies the conversion;
    the load is strict here. Optimiser, scheduler, RNG and step still come from the Trainer.
    """
    from trl import DPOTrainer

    class Trainer(DPOTrainer):
        def _load_from_checkpoint(self, resume_from_checkpoint: str,
                                  model: Any = None) -> None:
            weights = load_model(resume_from_checkpoint).state_dict()
            unwrap(model if model is not None else self.model).load_state_dict(weights)

    return Trainer


def dpo_loop(loop_cfg: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. `loop_cfg`: the config dict, the starting model
    directory, the output, the MLflow run and the driver's summary so far."""
    from ray.train.huggingface.transformers import RayTrainReportCallback

    cfg = load_config(OfflineConfig, overrides=loop_cfg["config"])
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    pairs = load_pairs(ray.train.get_dataset_shard("pairs"))
    images = {p["prompt_id"]: decode_png(p["degraded"]) for p in pairs}
    model_dir = loop_cfg["model_dir"]
    processor = load_processor(model_dir)
    model = load_model(model_dir)
    prompt = prompt_mode(model_dir)  # as the samples were generated; kept by the saved model
    cues = {k: image_cues(im) for k, im in images.items()} if prompt == "cues" else None
    tracker = Tracker()
    if rank == 0 and loop_cfg.get("run_id"):
        from mlflow import MlflowClient  # heavy; only rank 0 of a tracked run logs
        tracker = Tracker(MlflowClient(tracking_uri=loop_cfg["tracking_uri"]), loop_cfg["run_id"])
    ims = [images[p["prompt_id"]] for p in pairs]
    ims_cues = [cues[p["prompt_id"]] for p in pairs] if cues is not None else None
    chosen, rejected = [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    before = (logp_margin(model, processor, ims, chosen, rejected, prompt=prompt, cues=ims_cues)
              if rank == 0 else 0.0)
    ckpt = ray.train.get_checkpoint()
    with tempfile.TemporaryDirectory() as scratch, \
            (ckpt.as_directory() if ckpt else tempfile.TemporaryDirectory()) as restored:
        trainer = dpo_trainer_class()(model=model, args=dpo_args(cfg, scratch),
                                      train_dataset=dpo_dataset(pairs, images, cues),
                                      processing_class=processor,
                                      callbacks=[RayTrainReportCallback(),
                                                 StageCallback(tracker, loop_cfg.get("progress"),
                                                               rank, cfg.stop_at_step)])
        resume_from = None
        if ckpt is not None:
            resume_from = str(Path(restored) / RayTrainReportCallback.CHECKPOINT_NAME)
        start = (json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"]
                 if resume_from else 0)
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=resume_from)
        train_s = time.perf_counter() - t0
    step, total = trainer.state.global_step, trainer.state.max_steps
    if step < total or rank != 0:
        return  # stopped on purpose (stop_at_step): a rerun continues from the checkpoint
    policy = trainer.model
    after = logp_margin(policy, processor, ims, chosen, rejected, prompt=prompt, cues=ims_cues)
    train = {"train/logp_margin_before": before, "train/logp_margin_after": after,
             "train/steps": float(step), "train/resumed_from_step": float(start),
             "train/wall_seconds": train_s}
    tracker.log_metrics(train, step=step)
    summary = {**loop_cfg.get("summary", {}), **{k: round(v, 4) for k, v in train.items()}}
    with tempfile.TemporaryDirectory() as d:
        save_hf(policy, processor, d, prompt=prompt, grid_factor=answer_grid(model_dir))
        Path(d, SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        publish(d, f"{loop_cfg['output']}/final", cfg.storage)
