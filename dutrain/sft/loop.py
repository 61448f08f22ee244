"""The per-worker SFT loop that Ray Train runs (one process per data-parallel replica).

A plain PyTorch loop rather than TRL's SFTTrainer: on the tiny model TRL costs ~2.2× per step
(extra metrics and collation, see docs/sft.md for the measurement), and the loop below is the
whole of what SFT needs here: assistant-only loss, AdamW with warm-up + cosine, DDP through
`ray.train.torch.prepare_model`, bf16 autocast and gradient checkpointing on GPU, fp32 on CPU.

Determinism (so `resume` replays an uninterrupted run): every worker's rows come from a fixed
shard sorted by sample_id, batch order is a pure function of (seed, rank, step), and the
checkpoint holds the model, optimiser and scheduler at an optimiser-step boundary.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from dutrain.config import load_config
from dutrain.config.sft import SFTConfig
from dutrain.evaluate.metrics import score_sample, split_metrics
from dutrain.io.dataset import decode_png
from dutrain.io.storage import copy_tree, filesystem, is_remote
from dutrain.models import (
    encode_prompts,
    encode_sft,
    image_cues,
    load_model,
    load_processor,
    resolve_model,
    write_prompt_mode,
)
from dutrain.runtime.dist import world_size
from dutrain.tracking import Tracker
from dutrain.tracking.progress import post_step

from .aux import PerceptionHead, type_targets
from .data import batch_order, load_rows

STATE_FILE = "trainer_state.pt"


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to `floor` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: Any, lr: float, vision_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: the vision tower (`visual.` parameters) at lr × vision_scale, the rest at
    lr."""
    vision, rest = [], []
    for name, p in model.named_parameters():
        (vision if ".visual." in f".{name}" else rest).append(p)
    return [g for g in ({"params": rest, "lr": lr}, {"params": vision, "lr": lr * vision_scale})
            if g["params"]]


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def save_hf(model: Any, processor: Any, out: str | os.PathLike, *, prompt: str,
            grid_factor: int = 1) -> None:
    """An ordinary Hugging Face directory (safetensors, config, processor, chat template) plus
    the model's prompt mode and answer grid (dutrain_prompt.json, `dutrain.models.prompt_mode`,
    `answer_grid`)."""
    unwrap(model).save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    write_prompt_mode(out, prompt, grid_factor)


def publish(local_dir: str | os.PathLike, uri: str, storage: Any = None) -> None:
    """Replace `uri` (local dir or s3:// prefix) with the contents of `local_dir`."""
    if not is_remote(uri):
        dst = Path(uri)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        copy_tree(local_dir, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        return
    fs, path = filesystem(uri, storage)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    copy_tree(local_dir, uri, storage)


class Batcher:
    """Decoded images + targets → model inputs on the device, prompted in `prompt` mode (cues
    mode: each row's `cues` as data preparation measured them, else measured once, on first
    use)."""

    def __init__(self, processor: Any, rows: list[dict[str, Any]], device: Any,
                 prompt: str = "plain"):
        self.processor, self.rows, self.device, self.prompt = processor, rows, device, prompt
        self._cues: dict[int, dict[str, float]] = {}

    def __call__(self, idx: np.ndarray | list[int]) -> dict[str, Any]:
        idx = [int(i) for i in idx]
        rows = [self.rows[i] for i in idx]
        images = [decode_png(r["degraded"]) for r in rows]
        cues = None
        if self.prompt == "cues":
            for i, im in zip(idx, images):
                if i not in self._cues:
                    self._cues[i] = self.rows[i].get("cues") or image_cues(im)
            cues = [self._cues[i] for i in idx]
        b = encode_sft(self.processor, images, [r["target"] for r in rows], mode=self.prompt,
                       cues=cues)
        return {k: v.to(self.device) for k, v in b.items()}


def _all_reduce_sum(values: list[float], device: Any) -> list[float]:
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def val_loss(model: Any, batcher: Batcher, batch_size: int, autocast: Any, device: Any) -> float:
    """Token-weighted loss over this worker's val rows, summed across workers."""
    model.eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(batcher.rows), batch_size):
            b = batcher(list(range(i, min(i + batch_size, len(batcher.rows)))))
            n = float((b["labels"][:, 1:] != -100).sum())
            with autocast():
                total += float(model(**b).loss) * n
            count += n
    model.train()
    total, count = _all_reduce_sum([total, count], device)
    return total / max(count, 1.0)


def transformers_completions(model: Any, processor: Any, images: list[np.ndarray],
                             max_new_tokens: int, batch_size: int = 16,
                             prompt: str = "plain") -> list[str]:
    """Greedy completions with transformers (the final evaluation runs inside the trainer),
    prompted in `prompt` mode."""
    m = unwrap(model)
    m.eval()
    out: list[str] = []
    tok = processor.tokenizer
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            p = encode_prompts(processor, images[i:i + batch_size], prompt)
            p = {k: v.to(m.device) for k, v in p.items()}
            g = m.generate(**p, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(g[:, p["input_ids"].shape[1]:], skip_special_tokens=True)
    m.train()
    return out


def final_evaluation(model: Any, processor: Any, rows: list[dict[str, Any]], max_new_tokens: int,
                     prompt: str = "plain", grid_factor: int = 1
                     ) -> tuple[dict[str, float], list[str]]:
    """`val/...` metrics of the shared scorer (format validity, type F1, …) and completions."""
    comps = transformers_completions(model, processor,
                                     [decode_png(r["degraded"]) for r in rows], max_new_tokens,
                                     prompt=prompt)
    scored = [score_sample(r["sample_id"], "val", c, r["annotation"], grid_factor=grid_factor)
              for r, c in zip(rows, comps)]
    return split_metrics("val", scored), comps


class SFTRecipe:
    """One Ray Train worker's SFT run, as named steps (the shape of `dutrain.rl.controller`):

        setup → resume → (train_step → evaluate → publish_best → checkpoint)* → finish

    Every worker runs every step (DDP and Ray Train's report are collective); the side effects
    (best/ and final/ models, MLflow, progress) happen on rank 0 only.
    """

    def __init__(self, loop_cfg: dict[str, Any]):
        self.loop_cfg = loop_cfg
        self.cfg = load_config(SFTConfig, overrides=loop_cfg["config"])
        self.out_uri: str = loop_cfg["output"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.bf16 = self.cfg.dtype == "bfloat16" or (self.cfg.dtype == "auto"
                                                     and self.device.type == "cuda")
        #: the last checkpoint's trainer state (optimiser, scheduler, step), read in setup()
        self.state: dict[str, Any] | None = None
        self.start, self.best = 0, float("inf")
        self.stop = min(self.cfg.max_steps, self.cfg.stop_at_step or self.cfg.max_steps)

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # ------------------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Seed, model (the checkpoint's weights when Ray Train restores one), DDP, optimiser,
        scheduler, this worker's rows and the tracker."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        model_dir = resolve_model(cfg.model, storage=cfg.storage,
                                  tiny=cfg.tiny.spec() if cfg.model == "tiny" else None)
        self.processor = load_processor(model_dir)
        model = self._load_model(model_dir)
        #: the auxiliary perception head (aux_loss > 0), hooked on the unwrapped model's tower
        self.aux = PerceptionHead(model).to(self.device) if cfg.aux_loss > 0 else None
        self.model = ray.train.torch.prepare_model(model)
        groups = param_groups(self.model, cfg.lr, cfg.vision_lr_scale)
        if self.aux is not None:
            groups.append({"params": list(self.aux.parameters()), "lr": cfg.lr})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
        self.rows = load_rows(ray.train.get_dataset_shard(f"train_{self.rank}"))
        self.val_rows = load_rows(ray.train.get_dataset_shard("val"))
        self.train_b = Batcher(self.processor, self.rows, self.device, cfg.prompt)
        self.val_b = Batcher(self.processor, self.val_rows[:cfg.val_samples][self.rank::self.world],
                             self.device, cfg.prompt)
        self.tracker = Tracker()
        if self.rank == 0 and self.loop_cfg.get("run_id"):
            from mlflow import MlflowClient  # heavy; only rank 0 of a tracked run logs
            self.tracker = Tracker(MlflowClient(tracking_uri=self.loop_cfg["tracking_uri"]),
                                   self.loop_cfg["run_id"])

    def _load_model(self, model_dir: Any) -> Any:
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                model = load_model(d)
                self.state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        else:
            model = load_model(model_dir)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return model

    def resume(self) -> None:
        """Optimiser, scheduler, step and best validation loss of the restored checkpoint; then
        the batch order from that step (a pure function of seed, rank and step)."""
        if self.state is not None:
            self.opt.load_state_dict(self.state["optimizer"])
            self.sched.load_state_dict(self.state["scheduler"])
            self.start, self.best = int(self.state["step"]), float(self.state["best_val_loss"])
            if self.aux is not None and "aux_head" in self.state:
                self.aux.load_state_dict(self.state["aux_head"])
        cfg = self.cfg
        self.order = batch_order(len(self.rows), cfg.batch_size, cfg.seed, self.rank,
                                 self.start * cfg.grad_accum)
        self._reset_window()
        self.t_window = time.perf_counter()

    # ------------------------------------------------------------------------------ training
    def _reset_window(self) -> None:
        self.window = {"loss": 0.0, "n": 0.0, "tokens": 0.0, "samples": 0.0, "aux": 0.0}

    def train_step(self) -> None:
        """One optimiser step: `grad_accum` micro-batches (DDP syncs on the last), clip, step."""
        cfg, model = self.cfg, self.model
        for micro in range(cfg.grad_accum):
            _, idx = next(self.order)
            b = self.train_b(idx)
            sync = micro == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
            with model.no_sync() if not sync else contextlib.nullcontext():
                with self.autocast():
                    loss = model(**b).loss
                    total = loss
                    if self.aux is not None:
                        aux = self.aux.loss(b["image_grid_thw"], type_targets(
                            [self.rows[int(i)]["annotation"] for i in idx]))
                        total = loss + cfg.aux_loss * aux
                        self.window["aux"] += float(aux)
                (total / cfg.grad_accum).backward()
            self.window["loss"] += float(loss)
            self.window["n"] += 1
            self.window["tokens"] += float(b["attention_mask"].sum())
            self.window["samples"] += len(idx)
        params = list(model.parameters())
        if self.aux is not None:
            self.aux.sync_grads()
            params += list(self.aux.parameters())
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def train_metrics(self) -> dict[str, float]:
        """`train/...` over the steps since the last log (summed across workers); resets them."""
        w = self.window
        loss_sum, n, tokens, samples, aux = _all_reduce_sum(
            [w["loss"], w["n"], w["tokens"], w["samples"], w["aux"]], self.device)
        dt = time.perf_counter() - self.t_window
        self._reset_window()
        out = {"train/loss": loss_sum / max(n, 1), "train/lr": self.sched.get_last_lr()[0],
               "train/tokens_per_s": tokens / dt, "train/samples_per_s": samples / dt}
        if self.aux is not None:  # the answer loss stays `train/loss`, comparable across runs
            out["train/aux_loss"] = aux / max(n, 1)
        return out

    def evaluate(self, step: int) -> dict[str, float]:
        """`val/loss` on the val rows (all workers); a new best is published."""
        loss = val_loss(self.model, self.val_b, self.cfg.batch_size, self.autocast, self.device)
        if self.aux is not None:
            self.aux.drop()
        if loss < self.best:
            self.best = loss
            self.publish_best(step)
        return {"val/loss": loss, "val/best_loss": self.best}

    def publish_best(self, step: int) -> None:
        """Rank 0: the model to `output`/best (+ dutrain_sft.json), tagged on the run."""
        if self.rank != 0:
            return
        with tempfile.TemporaryDirectory() as d:
            save_hf(self.model, self.processor, d, prompt=self.cfg.prompt,
                    grid_factor=self.cfg.grid_factor)
            Path(d, "dutrain_sft.json").write_text(json.dumps({"step": step,
                                                              "val_loss": self.best}))
            publish(d, f"{self.out_uri}/best", self.cfg.storage)
        self.tracker.set_tags({"dutrain.best_step": step})

    def log(self, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self.tracker.log_metrics(metrics, step=step)
        if self.rank == 0:
            post_step(self.loop_cfg.get("progress"), step, metrics)

    # -------------------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int, metrics: dict[str, float]) -> None:
        """Every worker reports (Ray Train's report is collective); rank 0 attaches the checkpoint
        (HF model + trainer_state.pt at this optimiser-step boundary)."""
        report = {"step": step, **{k.replace("/", "_"): v for k, v in metrics.items()}}
        if self.rank != 0:
            ray.train.report(report, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            save_hf(self.model, self.processor, d, prompt=self.cfg.prompt,
                    grid_factor=self.cfg.grid_factor)
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                        "step": step, "best_val_loss": self.best,
                        **({"aux_head": self.aux.state_dict()} if self.aux is not None else {})},
                       Path(d) / STATE_FILE)
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))

    def finish(self) -> None:
        """Rank 0: the small validation evaluation, sample completions as artifacts, final/ model
        (with the evaluation in final/eval.json)."""
        cfg, tracker = self.cfg, self.tracker
        rows = self.val_rows[:cfg.final_eval_samples]
        metrics: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as d:
            if rows:
                t0 = time.perf_counter()
                metrics, comps = final_evaluation(self.model, self.processor, rows,
                                                  cfg.max_new_tokens, cfg.prompt,
                                                  cfg.grid_factor)
                metrics["val/eval_seconds"] = time.perf_counter() - t0
                tracker.log_metrics(metrics, step=cfg.max_steps)
                write_samples(d, rows, comps, cfg.sample_completions)
                tracker.log_artifact(d, "samples")
        with tempfile.TemporaryDirectory() as d:
            save_hf(self.model, self.processor, d, prompt=self.cfg.prompt,
                    grid_factor=self.cfg.grid_factor)
            Path(d, "eval.json").write_text(json.dumps(metrics, indent=1))
            publish(d, f"{self.out_uri}/final", cfg.storage)
        tracker.set_tags({"dutrain.checkpoint": f"{self.out_uri}/final"})


def write_samples(out: str | os.PathLike, rows: list[dict[str, Any]], comps: list[str],
                  k: int) -> None:
    """The first `k` rows' images and completions.jsonl (reference and completion) in `out`."""
    lines = []
    for r, c in list(zip(rows, comps))[:k]:
        name = r["sample_id"].replace("/", "_").replace(":", "_")
        Path(out, f"{name}.png").write_bytes(r["degraded"])
        lines.append(json.dumps({"sample_id": r["sample_id"], "image": f"{name}.png",
                                 "reference": json.loads(r["annotation"]), "completion": c}))
    Path(out, "completions.jsonl").write_text("\n".join(lines) + "\n")


def train_loop(loop_cfg: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. `loop_cfg`: the config dict and run facts."""
    sft = SFTRecipe(loop_cfg)
    sft.setup()
    sft.resume()
    cfg = sft.cfg
    sft.model.train()
    for step in range(sft.start, sft.stop):
        sft.train_step()
        done = step + 1
        metrics: dict[str, float] = {}
        if done % cfg.log_every == 0 or done == sft.stop:
            metrics.update(sft.train_metrics())
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            metrics.update(sft.evaluate(done))
        sft.log(metrics, done)
        if done % cfg.checkpoint_every == 0 or done == sft.stop:
            sft.checkpoint(done, metrics)
        if metrics:
            sft.t_window = time.perf_counter()  # checkpoint and eval time are not throughput
    if sft.stop < cfg.max_steps:
        return  # interrupted on purpose; `resume` continues from the checkpoint just written
    if sft.rank == 0:
        sft.finish()
