"""`dutrain offline`: the driver (docs/offline.md).

    sample   K completions per train image from `model` (vLLM engines in Ray actors, the
             `eval` serving code), one seed per sample, at `generation.temperature`
    score    each with `dutrain.rewards.score` against the row's annotation
    pair     chosen = higher total, rejected = lower (`min_margin`, ties dropped); and the best
             sample per image
    train    in Ray Train workers, after the sampling actors are gone: `method: dpo` runs TRL's
             `DPOTrainer` on the pairs (`dutrain.offline.dpo`), `method: rft` the SFT stage's
             loop (`dutrain.sft.loop.train_loop`) on the best samples above `rft_min_reward`

    output/samples/samples.parquet   every sample: prompt_id, sample_index, seed, completion,
                                     format, type, key, value, total (+ manifest.json: what
                                     they were sampled with, so a rerun can reuse them)
    output/pairs/pairs.parquet       the pairs (texts, rewards, margin)
    output/pairs/best.parquet        the best sample per image (rejection-sampling data)
    output/train/                    Ray Train run: the latest `keep_checkpoints` checkpoints
    output/final/                    HF model (safetensors) + dutrain_offline.json

Resume (`resume: true`, the default): a rerun on the same output reuses the samples when their
manifest matches this config and they are complete, and continues training from the latest
checkpoint in output/train when the training settings are unchanged (else it starts training
over). `resume: false` deletes all of it first.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from dutrain.config import load_config, to_dict
from dutrain.config.offline import OfflineConfig
from dutrain.config.sft import SFTConfig
from dutrain.errors import UserError
from dutrain.evaluate.generate import sample_seed, vllm_samples
from dutrain.io.dataset import DatasetError, read_table
from dutrain.io.storage import absolute, filesystem, join
from dutrain.models import answer_grid, prompt_mode, resolve_model
from dutrain.rewards import score
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.sft.data import prepared_splits
from dutrain.sft.loop import publish, train_loop
from dutrain.sft.run import RUN_NAME, _clear_previous, fit
from dutrain.tracking import stage_run, tracking_uri

from .dpo import SUMMARY_FILE, dpo_loop
from .pairs import Pair, best_samples, build_pairs, pair_stats

REWARD_COLUMNS = ("format", "type", "key", "value", "total")
MANIFEST = "manifest.json"
TRAIN_KEY = "train_key.json"
#: config keys that change what training does: a checkpoint made under other values is stale
TRAIN_KEYS = ("method", "rft_min_reward", "rft_val_target", "val_samples", "min_margin",
              "max_pairs_per_prompt", "beta", "lr", "epochs", "batch_size", "max_steps",
              "max_grad_norm", "num_workers", "seed")


def check_inputs(cfg: OfflineConfig) -> Any:
    """Everything that can fail before an actor starts, as one-line errors; returns the train
    rows (sample_id, degraded, annotation), read once."""
    preflight.dataset("dataset", cfg.dataset, cfg.storage)
    preflight.model("model", cfg.model, cfg.storage)
    preflight.output_location("output", cfg.output, cfg.storage)
    preflight.tracking(cfg.tracking)
    try:
        table = read_table(cfg.dataset, ["train"], ["sample_id", "degraded", "annotation"],
                           cfg.train_limit, cfg.storage)
        val = (read_table(cfg.dataset, ["val"], ["sample_id"], None, cfg.storage).num_rows
               if cfg.method == "rft" else 1)
    except DatasetError as exc:
        raise preflight.PreflightError(f"bad value for 'dataset': {exc}") from None
    if table.num_rows == 0:
        raise preflight.PreflightError(f"bad value for 'dataset': '{cfg.dataset}' has no 'train' "
                                       f"rows; the offline stage samples the train images")
    if val == 0:
        raise preflight.PreflightError(f"bad value for 'dataset': '{cfg.dataset}' has no 'val' "
                                       f"rows; method 'rft' trains with the SFT loop, which "
                                       f"reports a validation loss")
    return table


# ------------------------------------------------------------------------------ sampling

def sample_and_score(cfg: OfflineConfig, model_dir: str, rows: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """K scored samples per row (Ray must be up) and the sampling metrics; a progress bar of
    samples on stderr when `progress`."""
    k = cfg.samples_per_prompt
    with tqdm(total=len(rows) * k, desc="offline sample", unit="sample", file=sys.stderr,
              disable=not cfg.progress, dynamic_ncols=True) as bar:
        texts, stats = vllm_samples(model_dir, [r["degraded"] for r in rows], k, cfg.generation,
                                    on_batch=bar.update)
    weights, grid = cfg.rewards.as_dict(), answer_grid(model_dir)
    samples = []
    for i, (r, comps) in enumerate(zip(rows, texts)):
        for j, text in enumerate(comps):
            samples.append({"prompt_id": r["sample_id"], "sample_index": j,
                            "seed": sample_seed(cfg.generation.seed, i, k, j), "completion": text,
                            **score(text, r["annotation"], weights, grid)})
    metrics = sample_metrics(samples, len(rows), k)
    metrics.update({"sample/samples_per_s": stats.samples_per_s,
                    "sample/tokens_per_s": stats.tokens_per_s,
                    "sample/startup_seconds": stats.startup_seconds,
                    "sample/generate_seconds": stats.generate_seconds})
    return samples, metrics


def sample_metrics(samples: list[dict[str, Any]], prompts: int, k: int) -> dict[str, float]:
    totals = np.array([s["total"] for s in samples])
    return {"sample/prompts": float(prompts), "sample/samples": float(len(samples)),
            "sample/reward_mean": float(totals.mean()),
            "sample/reward_std_within_prompt": float(np.mean(totals.reshape(prompts, k)
                                                             .std(axis=1))),
            **{f"sample/{c}": float(np.mean([s[c] for s in samples])) for c in REWARD_COLUMNS}}


def sampling_key(cfg: OfflineConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the samples depend on: a rerun reuses them only when this is unchanged."""
    return {"model": absolute(cfg.model) if Path(cfg.model).expanduser().exists() else cfg.model,
            "dataset": absolute(cfg.dataset), "prompt_ids": [r["sample_id"] for r in rows],
            "samples_per_prompt": cfg.samples_per_prompt,
            "generation": to_dict(cfg.generation), "rewards": cfg.rewards.as_dict()}


def reusable_samples(output: str, key: dict[str, Any], storage: Any
                     ) -> list[dict[str, Any]] | None:
    """The samples under `output`/samples when their manifest equals `key` and every prompt has
    its K samples; else None."""
    fs, path = filesystem(join(output, "samples"), storage)
    try:
        if json.loads(fs.cat_file(f"{path}/{MANIFEST}")) != json.loads(json.dumps(key)):
            return None
        with fs.open(f"{path}/samples.parquet", "rb") as f:
            samples = pq.read_table(f).to_pylist()
    except (FileNotFoundError, ValueError, OSError):
        return None
    want = len(key["prompt_ids"]) * key["samples_per_prompt"]
    return samples if len(samples) == want else None


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)


def pair_records(pairs: list[Pair], samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = {(s["prompt_id"], s["sample_index"]): s["completion"] for s in samples}
    return [{"prompt_id": p.prompt_id, "chosen_index": p.chosen, "rejected_index": p.rejected,
             "chosen": text[(p.prompt_id, p.chosen)], "rejected": text[(p.prompt_id, p.rejected)],
             "chosen_reward": p.chosen_reward, "rejected_reward": p.rejected_reward,
             "margin": p.margin} for p in pairs]


# ------------------------------------------------------------------------------ training

def dpo_steps(cfg: OfflineConfig, n_pairs: int) -> int:
    """Optimiser steps of the DPO run (the HF Trainer's count: each worker's share of the pairs
    in batches, the last one partial)."""
    per_epoch = math.ceil(math.ceil(n_pairs / cfg.num_workers) / cfg.batch_size)
    return cfg.max_steps or cfg.epochs * per_epoch


def rft_steps(cfg: OfflineConfig, n_rows: int) -> int:
    """Optimiser steps of the RFT run (the SFT loop's epochs: whole batches per worker)."""
    return cfg.max_steps or cfg.epochs * max(1, n_rows // cfg.num_workers // cfg.batch_size)


def train_dpo(cfg: OfflineConfig, model_dir: str, records: list[dict[str, Any]],
              pngs: dict[str, bytes], output: str, run: Any, summary: dict[str, Any]) -> Any:
    """TRL's DPOTrainer in Ray Train workers (`dpo.dpo_loop`); returns Ray Train's Result."""
    import ray.data

    ds = ray.data.from_arrow(pa.Table.from_pylist(
        [{**r, "degraded": pngs[r["prompt_id"]]} for r in records]))
    loop_cfg = {"config": to_dict(cfg), "model_dir": model_dir, "output": output,
                "run_id": run.run_id, "tracking_uri": tracking_uri(cfg.tracking.uri),
                "summary": summary}
    return fit(dpo_loop, loop_cfg, cfg, output, cfg.storage, {"pairs": ds},
               dpo_steps(cfg, len(records)), "offline dpo", cfg.progress,
               show=("dpo/loss", "dpo/rewards/margins"))


def rft_config(cfg: OfflineConfig, model_dir: str, output: str, steps: int) -> SFTConfig:
    """The SFT stage's config for rejection-sampling fine-tuning from `model_dir`."""
    return load_config(SFTConfig, overrides={
        "model": model_dir, "dataset": absolute(cfg.dataset), "output": output,
        "target": cfg.rft_val_target, "prompt": prompt_mode(model_dir),
        "grid_factor": answer_grid(model_dir),
        "num_workers": cfg.num_workers, "use_gpu": cfg.use_gpu,
        "cpus_per_worker": cfg.cpus_per_worker, "batch_size": cfg.batch_size, "max_steps": steps,
        "lr": cfg.lr, "warmup_steps": 0, "max_grad_norm": cfg.max_grad_norm, "seed": cfg.seed,
        "progress": cfg.progress, "log_every": 1, "eval_every": steps,
        "val_samples": cfg.val_samples, "checkpoint_every": cfg.checkpoint_every,
        "keep_checkpoints": cfg.keep_checkpoints, "final_eval_samples": 0,
        "sample_completions": 0, "resume": cfg.resume, "max_failures": cfg.max_failures,
        "stop_at_step": cfg.stop_at_step, "storage": to_dict(cfg.storage),
        "tracking": to_dict(cfg.tracking), "ray": to_dict(cfg.ray)})


def train_rft(cfg: OfflineConfig, model_dir: str, best: list[dict[str, Any]],
              rows: dict[str, dict[str, Any]], output: str, run: Any) -> Any:
    """The SFT stage's Ray Train loop on the best samples (their completions as targets), with
    the dataset's val rows for its validation loss; returns Ray Train's Result."""
    import ray.data

    sft = rft_config(cfg, model_dir, output, rft_steps(cfg, len(best)))
    ds = ray.data.from_items([{"sample_id": b["prompt_id"],
                               "degraded": rows[b["prompt_id"]]["degraded"],
                               "annotation": rows[b["prompt_id"]]["annotation"],
                               "target": b["completion"]} for b in best])
    shards = [ds] if cfg.num_workers == 1 else ds.split(cfg.num_workers, equal=True)
    val = prepared_splits(sft.dataset, "val", sft.target, 1, sft.val_samples, cfg.storage,
                          prompt=sft.prompt)[0]
    loop_cfg = {"config": to_dict(sft), "output": output, "run_id": run.run_id,
                "tracking_uri": tracking_uri(cfg.tracking.uri)}
    return fit(train_loop, loop_cfg, sft, output, cfg.storage,
               {f"train_{i}": s for i, s in enumerate(shards)} | {"val": val}, sft.max_steps,
               "offline rft", cfg.progress, show=("train/loss", "val/loss"))


def _read_json(uri: str, storage: Any) -> dict[str, Any] | None:
    fs, path = filesystem(uri, storage)
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def _write_json(uri: str, data: dict[str, Any], storage: Any) -> None:
    fs, path = filesystem(uri, storage)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(json.dumps(data, indent=1))


# ------------------------------------------------------------------------------ driver

def run(cfg: OfflineConfig) -> int:
    table = check_inputs(cfg)
    output = absolute(cfg.output)
    if not cfg.resume:
        with preflight.s3_errors("output", output):
            _clear_previous(output, cfg.storage, ("samples", "pairs", RUN_NAME, "best", "final",
                                                  TRAIN_KEY))
    model_dir = str(resolve_model(cfg.model, storage=cfg.storage))
    rows = table.to_pylist()
    by_id = {r["sample_id"]: r for r in rows}
    summary: dict[str, Any] = {"output": output, "model": cfg.model, "method": cfg.method}
    key = sampling_key(cfg, rows)
    with stage_run(cfg, "offline", params={"model_dir": model_dir}) as run, \
            ray_session(cfg.ray), tempfile.TemporaryDirectory() as stage:
        st = Path(stage)
        t0 = time.perf_counter()
        samples = reusable_samples(output, key, cfg.storage) if cfg.resume else None
        reused = samples is not None
        if samples is None:
            # new samples: checkpoints trained on other ones are stale
            _clear_previous(output, cfg.storage, (RUN_NAME, "best", "final", TRAIN_KEY))
            samples, metrics = sample_and_score(cfg, model_dir, rows)
            metrics["sample/wall_seconds"] = time.perf_counter() - t0
        else:
            print(f"offline: reusing the {len(samples)} samples under {output}/samples",
                  file=sys.stderr)
            metrics = sample_metrics(samples, len(rows), cfg.samples_per_prompt)
        metrics["sample/reused"] = float(reused)
        write_parquet(samples, st / "samples" / "samples.parquet")
        (st / "samples" / MANIFEST).write_text(json.dumps(key))
        pairs = build_pairs(samples, cfg.min_margin, cfg.max_pairs_per_prompt or None)
        metrics.update(pair_stats(pairs, len(rows)))
        records = pair_records(pairs, samples)
        best = best_samples(samples, cfg.rft_min_reward if cfg.method == "rft" else 0.0)
        write_parquet(records, st / "pairs" / "pairs.parquet")
        write_parquet(best_samples(samples), st / "pairs" / "best.parquet")
        if cfg.method == "rft":
            metrics.update({"rft/kept": float(len(best)), "rft/prompts": float(len(rows)),
                            "rft/mean_reward": float(np.mean([b["total"] for b in best]))
                            if best else 0.0})
        run.log_metrics(metrics)
        for sub in ("samples", "pairs"):
            if not (reused and sub == "samples"):
                publish(st / sub, f"{output}/{sub}", cfg.storage)
        summary.update({k: round(v, 4) for k, v in metrics.items()})
        if cfg.method == "dpo" and not pairs:
            raise UserError(f"no preference pairs: the {len(samples)} samples of "
                            f"{len(rows)} images differ by less than min_margin = "
                            f"{cfg.min_margin} within every image (samples under "
                            f"{output}/samples); raise generation.temperature or "
                            f"samples_per_prompt, or lower min_margin")
        if cfg.method == "rft" and len(best) < cfg.num_workers:
            raise UserError(f"{len(best)} images have a sample with total reward >= "
                            f"rft_min_reward = {cfg.rft_min_reward} (samples under "
                            f"{output}/samples); rft needs at least one per worker "
                            f"({cfg.num_workers}): lower rft_min_reward")
        # a checkpoint made under other training settings is stale
        train_key = {k: to_dict(cfg)[k] for k in TRAIN_KEYS}
        if _read_json(join(output, TRAIN_KEY), cfg.storage) not in (None, train_key):
            _clear_previous(output, cfg.storage, (RUN_NAME, "best"))
        _clear_previous(output, cfg.storage, ("final",))
        _write_json(join(output, TRAIN_KEY), train_key, cfg.storage)
        t1 = time.perf_counter()
        if cfg.method == "dpo":
            result = train_dpo(cfg, model_dir, records, {i: r["degraded"] for i, r in
                                                         by_id.items()}, output, run, summary)
        else:
            result = train_rft(cfg, model_dir, best, by_id, output, run)
        train_s = time.perf_counter() - t1
        ckpt = result.checkpoint.path if result.checkpoint else ""
        run.set_tags({"dutrain.output": output, "dutrain.ray_checkpoint": ckpt})
        run.log_metrics({"train/stage_wall_seconds": train_s})
        done = _read_json(join(output, "final", "eval.json" if cfg.method == "rft"
                                else SUMMARY_FILE), cfg.storage)
        if done is None:
            print(f"offline: stopped at step {cfg.stop_at_step} (stop_at_step); checkpoint "
                  f"{ckpt}; run again on '{output}' to continue", file=sys.stderr)
            return 0
        if cfg.method == "rft":
            summary.update({"train/steps": float(rft_steps(cfg, len(best))),
                            "train/wall_seconds": round(train_s, 4)})
            _write_json(join(output, "final", SUMMARY_FILE), summary, cfg.storage)
        else:
            summary = done
    print(json.dumps(summary, indent=1))
    return 0
