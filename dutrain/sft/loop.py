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

from dutrain.io.dataset import decode_png
from dutrain.models import encode_sft

STATE_FILE = "trainer_state.pt"


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to `floor` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: Any, lr: float, vision_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: the vision tower (`visual.` parameters) at lr × vision_scale, the rest at lr."""
    vision, rest = [], []
    for name, p in model.named_parameters():
        (vision if ".visual." in f".{name}" else rest).append(p)
    return [g for g in ({"params": rest, "lr": lr}, {"params": vision, "lr": lr * vision_scale})
            if g["params"]]


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def save_hf(model: Any, processor: Any, out: str | os.PathLike) -> None:
    """An ordinary Hugging Face directory (safetensors, config, processor, chat template)."""
    unwrap(model).save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))


def publish(local_dir: str | os.PathLike, uri: str, storage: Any = None) -> None:
    """Replace `uri` (local dir or s3:// prefix) with the contents of `local_dir`."""
    from dutrain.io.storage import filesystem, is_remote

    if not is_remote(uri):
        dst = Path(uri)
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local_dir, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        return
    fs, path = filesystem(uri, storage)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.put(str(local_dir).rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)


class Batcher:
    """Decoded images + targets → model inputs on the device."""

    def __init__(self, processor: Any, rows: list[dict[str, Any]], device: Any):
        self.processor, self.rows, self.device = processor, rows, device

    def __call__(self, idx: np.ndarray | list[int]) -> dict[str, Any]:
        rows = [self.rows[int(i)] for i in idx]
        b = encode_sft(self.processor, [decode_png(r["degraded"]) for r in rows],
                       [r["target"] for r in rows])
        return {k: v.to(self.device) for k, v in b.items()}


def _all_reduce_sum(values: list[float], device: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def val_loss(model: Any, batcher: Batcher, batch_size: int, autocast: Any, device: Any) -> float:
    """Token-weighted loss over this worker's val rows, summed across workers."""
    import torch

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


def generate_completions(model: Any, processor: Any, images: list[np.ndarray],
                         max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions with transformers (the final evaluation runs inside the trainer)."""
    import torch

    from dutrain.models import encode_prompts

    m = unwrap(model)
    m.eval()
    out: list[str] = []
    tok = processor.tokenizer
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            p = encode_prompts(processor, images[i:i + batch_size])
            p = {k: v.to(m.device) for k, v in p.items()}
            g = m.generate(**p, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(g[:, p["input_ids"].shape[1]:], skip_special_tokens=True)
    m.train()
    return out


def final_evaluation(model: Any, processor: Any, rows: list[dict[str, Any]], max_new_tokens: int,
                     ) -> tuple[dict[str, float], list[str]]:
    """`val/...` metrics of the shared scorer (format validity, type F1, …) and completions."""
    from dutrain.evaluate.metrics import score_sample, split_metrics

    comps = generate_completions(model, processor, [decode_png(r["degraded"]) for r in rows],
                                 max_new_tokens)
    scored = [score_sample(r["sample_id"], "val", c, r["annotation"]) for r, c in zip(rows, comps)]
    return split_metrics("val", scored), comps


def train_loop(loop_cfg: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. `loop_cfg`: the config dict and run facts."""
    import ray.train
    import ray.train.torch
    import torch

    from dutrain.config import load_config
    from dutrain.config.sft import SFTConfig
    from dutrain.models import load_model, load_processor, resolve_model
    from dutrain.tracking import Tracker
    from dutrain.tracking.progress import post_step

    from .data import batch_order, load_rows

    cfg = load_config(SFTConfig, overrides=loop_cfg["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and on_gpu)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))

    model_dir = resolve_model(cfg.model, storage=cfg.storage,
                              tiny=cfg.tiny.spec() if cfg.model == "tiny" else None)
    processor = load_processor(model_dir)
    ckpt = ray.train.get_checkpoint()
    state: dict[str, Any] | None = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            model = load_model(d)
            state = torch.load(Path(d) / STATE_FILE, weights_only=False)
    else:
        model = load_model(model_dir)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model = ray.train.torch.prepare_model(model)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.vision_lr_scale), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio))
    start, best = 0, float("inf")
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, best = int(state["step"]), float(state["best_val_loss"])

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    rows = load_rows(ray.train.get_dataset_shard(f"train_{rank}"))
    val_all = load_rows(ray.train.get_dataset_shard("val"))
    train_b = Batcher(processor, rows, device)
    val_b = Batcher(processor, val_all[:cfg.val_samples][rank::world], device)
    tracker = Tracker()
    if rank == 0 and loop_cfg.get("run_id"):
        from mlflow import MlflowClient
        tracker = Tracker(MlflowClient(tracking_uri=loop_cfg["tracking_uri"]), loop_cfg["run_id"])

    out_uri = loop_cfg["output"]
    stop = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    order = batch_order(len(rows), cfg.batch_size, cfg.seed, rank, start * cfg.grad_accum)
    window = {"loss": 0.0, "n": 0.0, "tokens": 0.0, "samples": 0.0}
    t_window = time.perf_counter()
    metrics: dict[str, float] = {}
    model.train()
    for step in range(start, stop):
        for micro in range(cfg.grad_accum):
            _, idx = next(order)
            b = train_b(idx)
            sync = micro == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
            ctx_mgr = model.no_sync() if not sync else contextlib.nullcontext()
            with ctx_mgr:
                with autocast():
                    loss = model(**b).loss
                (loss / cfg.grad_accum).backward()
            window["loss"] += float(loss)
            window["n"] += 1
            window["tokens"] += float(b["attention_mask"].sum())
            window["samples"] += len(idx)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        metrics = {}
        if done % cfg.log_every == 0 or done == stop:
            loss_sum, n, tokens, samples = _all_reduce_sum(
                [window["loss"], window["n"], window["tokens"], window["samples"]], device)
            dt = time.perf_counter() - t_window
            metrics.update({"train/loss": loss_sum / max(n, 1), "train/lr": sched.get_last_lr()[0],
                            "train/tokens_per_s": tokens / dt, "train/samples_per_s": samples / dt})
            window = dict.fromkeys(window, 0.0)
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            metrics["val/loss"] = val_loss(model, val_b, cfg.batch_size, autocast, device)
            if metrics["val/loss"] < best:
                best = metrics["val/loss"]
                if rank == 0:
                    with tempfile.TemporaryDirectory() as d:
                        save_hf(model, processor, d)
                        Path(d, "dutrain_sft.json").write_text(json.dumps(
                            {"step": done, "val_loss": best}))
                        publish(d, f"{out_uri}/best", cfg.storage)
                    tracker.set_tags({"dutrain.best_step": done})
            metrics["val/best_loss"] = best
        if metrics:
            tracker.log_metrics(metrics, step=done)
        if rank == 0:
            post_step(loop_cfg.get("progress"), done, metrics)
        if done % cfg.checkpoint_every == 0 or done == stop:
            _report_checkpoint(model, processor, opt, sched, done, best, metrics, rank)
        if metrics:
            t_window = time.perf_counter()  # checkpoint and eval time are not throughput
    if stop < cfg.max_steps:
        return  # interrupted on purpose; `resume` continues from the checkpoint just written
    if rank == 0:
        _finish(model, processor, val_all, cfg, out_uri, tracker)


def _report_checkpoint(model: Any, processor: Any, opt: Any, sched: Any, step: int, best: float,
                       metrics: dict[str, float], rank: int) -> None:
    """Every worker reports (Ray Train's report is collective); rank 0 attaches the checkpoint."""
    import ray.train
    import torch

    report = {"step": step, **{k.replace("/", "_"): v for k, v in metrics.items()}}
    if rank != 0:
        ray.train.report(report, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, processor, d)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                    "best_val_loss": best}, Path(d) / STATE_FILE)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))


def _finish(model: Any, processor: Any, val_rows: list[dict[str, Any]], cfg: Any, out_uri: str,
            tracker: Any) -> None:
    """Rank 0: the small validation evaluation, sample completions as artifacts, final/ model
    (with the evaluation in final/eval.json)."""
    rows = val_rows[:cfg.final_eval_samples]
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        if rows:
            t0 = time.perf_counter()
            metrics, comps = final_evaluation(model, processor, rows, cfg.max_new_tokens)
            metrics["val/eval_seconds"] = time.perf_counter() - t0
            tracker.log_metrics(metrics, step=cfg.max_steps)
            lines = []
            for r, c in list(zip(rows, comps))[:cfg.sample_completions]:
                name = r["sample_id"].replace("/", "_").replace(":", "_")
                Path(d, f"{name}.png").write_bytes(r["degraded"])
                lines.append(json.dumps({"sample_id": r["sample_id"], "image": f"{name}.png",
                                         "reference": json.loads(r["annotation"]),
                                         "completion": c}))
            Path(d, "completions.jsonl").write_text("\n".join(lines) + "\n")
            tracker.log_artifact(d, "samples")
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, processor, d)
        Path(d, "eval.json").write_text(json.dumps(metrics, indent=1))
        publish(d, f"{out_uri}/final", cfg.storage)
    tracker.set_tags({"dutrain.checkpoint": f"{out_uri}/final"})
