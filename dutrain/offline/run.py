"""`dutrain offline`: the driver (docs/offline.md).

    sample   K completions per train image from `model` (vLLM engines in Ray actors, the
             `eval` serving code), one seed per sample, at `generation.temperature`
    score    each with `dutrain.rewards.score` against the row's annotation
    pair     chosen = higher total, rejected = lower (`min_margin`, ties dropped)
    train    DPO with TRL's `DPOTrainer` in this process (vision-language inputs, the frozen
             starting model as reference), after the sampling actors are gone

    output/samples/samples.parquet   every sample: prompt_id, sample_index, seed, completion,
                                     format, type, key, value, total
    output/pairs/pairs.parquet       the pairs (texts, rewards, margin)
    output/pairs/best.parquet        the best sample per image (rejection-sampling data)
    output/final/                    HF model (safetensors) + dutrain_offline.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dutrain.config.offline import OfflineConfig
from dutrain.errors import UserError
from dutrain.evaluate.generate import vllm_samples
from dutrain.io.dataset import DatasetError, decode_png, read_table
from dutrain.io.storage import absolute
from dutrain.models import encode_sft, load_model, load_processor, resolve_model
from dutrain.models.prompts import messages, to_pil
from dutrain.rewards import score
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.sft.loop import publish, save_hf
from dutrain.tracking import stage_run

from .pairs import Pair, best_samples, build_pairs, pair_stats

REWARD_COLUMNS = ("format", "type", "key", "value", "total")



def check_inputs(cfg: OfflineConfig) -> None:
    """Everything that can fail before an actor starts, as one-line errors."""
    preflight.dataset("dataset", cfg.dataset, cfg.storage)
    preflight.model("model", cfg.model, cfg.storage)
    preflight.output_location("output", cfg.output, cfg.storage)
    preflight.tracking(cfg.tracking)
    try:
        n = read_table(cfg.dataset, ["train"], ["sample_id"], None, cfg.storage).num_rows
    except DatasetError as exc:
        raise preflight.PreflightError(f"bad value for 'dataset': {exc}") from None
    if n == 0:
        raise preflight.PreflightError(f"bad value for 'dataset': '{cfg.dataset}' has no 'train' "
                                       f"rows; the offline stage samples the train images")


# ------------------------------------------------------------------------------ sampling

def sample_and_score(cfg: OfflineConfig, model_dir: str, rows: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """K scored samples per row (Ray must be up) and the sampling metrics."""
    k = cfg.samples_per_prompt
    texts, stats = vllm_samples(model_dir, [r["degraded"] for r in rows], k, cfg.generation)
    weights = cfg.rewards.as_dict()
    samples = []
    for i, (r, comps) in enumerate(zip(rows, texts)):
        for j, text in enumerate(comps):
            samples.append({"prompt_id": r["sample_id"], "sample_index": j,
                            "seed": cfg.generation.seed + i * k + j, "completion": text,
                            **score(text, r["annotation"], weights)})
    totals = np.array([s["total"] for s in samples])
    per_prompt_std = float(np.mean(totals.reshape(len(rows), k).std(axis=1)))
    metrics = {"sample/prompts": float(len(rows)), "sample/samples": float(len(samples)),
               "sample/reward_mean": float(totals.mean()),
               "sample/reward_std_within_prompt": per_prompt_std,
               **{f"sample/{c}": float(np.mean([s[c] for s in samples])) for c in REWARD_COLUMNS},
               "sample/samples_per_s": stats.samples_per_s,
               "sample/tokens_per_s": stats.tokens_per_s,
               "sample/startup_seconds": stats.startup_seconds,
               "sample/generate_seconds": stats.generate_seconds}
    return samples, metrics


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

def completion_logps(model: Any, processor: Any, images: list[Any], texts: list[str],
                     batch_size: int = 8) -> np.ndarray:
    """Sum of the completion tokens' log-probs (target + end of turn, `encode_sft`'s labels)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            b = encode_sft(processor, images[i:i + batch_size], texts[i:i + batch_size])
            labels = b.pop("labels")
            logits = model(**b).logits[:, :-1].float()
            tgt = labels[:, 1:]
            mask = tgt != -100
            lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
            out += (lp * mask).sum(-1).tolist()
    return np.array(out)


def logp_margin(model: Any, processor: Any, pairs: list[dict[str, Any]],
                images: dict[str, Any]) -> float:
    """Mean log π(chosen) − log π(rejected) over the pairs."""
    ims = [images[p["prompt_id"]] for p in pairs]
    c = completion_logps(model, processor, ims, [p["chosen"] for p in pairs])
    r = completion_logps(model, processor, ims, [p["rejected"] for p in pairs])
    return float(np.mean(c - r))


def train_dpo(cfg: OfflineConfig, model_dir: str, pairs: list[dict[str, Any]],
              images: dict[str, Any], final_dir: Path, tracker: Any) -> dict[str, float]:
    """DPO with TRL's DPOTrainer in this process; saves the policy to `final_dir`."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    processor = load_processor(model_dir)
    model = load_model(model_dir)
    before = logp_margin(model, processor, pairs, images)
    ds = Dataset.from_dict({
        "images": [[to_pil(images[p["prompt_id"]])] for p in pairs],
        "prompt": [messages() for _ in pairs],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": p["chosen"]}]}]
                   for p in pairs],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": p["rejected"]}]}]
                     for p in pairs]})
    with tempfile.TemporaryDirectory() as scratch:
        args = DPOConfig(output_dir=scratch, beta=cfg.beta, learning_rate=cfg.lr,
                         num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
                         per_device_train_batch_size=cfg.batch_size,
                         max_grad_norm=cfg.max_grad_norm or 1e9, seed=cfg.seed, data_seed=cfg.seed,
                         logging_steps=1, report_to=[], save_strategy="no",
                         use_cpu=not torch.cuda.is_available(), bf16=False,
                         disable_tqdm=not cfg.progress, dataloader_num_workers=0)
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=processor)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    for h in trainer.state.log_history:
        step = int(h.get("step", 0))
        tracker.log_metrics({f"dpo/{k}": float(v) for k, v in h.items()
                             if k not in ("step", "epoch") and isinstance(v, (int, float))},
                            step=step)
    policy = trainer.model
    after = logp_margin(policy, processor, pairs, images)
    save_hf(policy, processor, final_dir)
    return {"train/logp_margin_before": before, "train/logp_margin_after": after,
            "train/steps": float(trainer.state.global_step), "train/wall_seconds": train_s}


# ------------------------------------------------------------------------------ driver

def run(cfg: OfflineConfig) -> int:
    check_inputs(cfg)
    output = absolute(cfg.output)
    model_dir = str(resolve_model(cfg.model, storage=cfg.storage))
    table = read_table(cfg.dataset, ["train"], ["sample_id", "degraded", "annotation"],
                       cfg.train_limit, cfg.storage)
    rows = table.to_pylist()
    summary: dict[str, Any] = {"output": output, "model": cfg.model}
    with stage_run(cfg, "offline", params={"model_dir": model_dir}) as run, \
            tempfile.TemporaryDirectory() as stage:
        st = Path(stage)
        t0 = time.perf_counter()
        with ray_session(cfg.ray):
            samples, metrics = sample_and_score(cfg, model_dir, rows)
        metrics["sample/wall_seconds"] = time.perf_counter() - t0
        write_parquet(samples, st / "samples" / "samples.parquet")
        pairs = build_pairs(samples, cfg.min_margin, cfg.max_pairs_per_prompt or None)
        metrics.update(pair_stats(pairs, len(rows)))
        records = pair_records(pairs, samples)
        write_parquet(records, st / "pairs" / "pairs.parquet")
        write_parquet(best_samples(samples), st / "pairs" / "best.parquet")
        run.log_metrics(metrics)
        for sub in ("samples", "pairs"):
            publish(st / sub, f"{output}/{sub}", cfg.storage)
        summary.update({k: round(v, 4) for k, v in metrics.items()})
        if not pairs:
            raise UserError(f"no preference pairs: the {len(samples)} samples of "
                            f"{len(rows)} images differ by less than min_margin = "
                            f"{cfg.min_margin} within every image (samples under "
                            f"{output}/samples); raise generation.temperature or "
                            f"samples_per_prompt, or lower min_margin")
        images = {r["sample_id"]: decode_png(r["degraded"]) for r in rows}
        final = st / "final"
        train = train_dpo(cfg, model_dir, records, images, final, run)
        run.log_metrics(train)
        summary.update({k: round(v, 4) for k, v in train.items()})
        (final / "dutrain_offline.json").write_text(json.dumps(summary, indent=1))
        publish(final, f"{output}/final", cfg.storage)
        run.set_tags({"dutrain.output": output})
    print(json.dumps(summary, indent=1))
    return 0
