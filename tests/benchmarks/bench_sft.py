"""SFT throughput: the Ray Train loop of `dutrain sft` against a plain single-process PyTorch
loop and TRL's SFTTrainer, on the same tiny model and the same samples. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_sft.py [--steps 40] [--batch 16]

- plain: encode_sft + forward/backward/AdamW in this process (torch threads = all cores);
- ray_1w: `dutrain sft` with 1 worker owning all cores; ray_2w: 2 workers (gloo DDP), 1 core each
  (samples/s counts both workers); their rates are MLflow's train/samples_per_s windows after
  the first (start-up and checkpoint time are excluded, as for the plain loop);
- trl: TRL SFTTrainer (prompt/completion format, completion-only loss, fp32, no checkpointing).
With a CUDA GPU, also tokens/s and model FLOPs utilisation of a Qwen2.5-VL-3B-shaped model
(random weights: throughput does not depend on their values) in bf16 on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_dataset(root: Path, samples: int) -> str:
    from dutrain.config import load_config
    from dutrain.config.generate import GenerateConfig
    from dutrain.data.generate import generate
    generate(load_config(GenerateConfig, overrides=[
        f"output={root}", f"samples={samples}", "image_size=128", "progress=false",
        "tracking.enabled=false", "ood_fraction=0"]))
    return str(root)


def load_rows(root: str, n: int) -> list[dict]:
    from dutrain.io.dataset import read_table
    from dutrain.sft.data import make_target
    t = read_table(root, ["train"], ["sample_id", "degraded", "annotation"], limit=n)
    return [{"sample_id": r["sample_id"], "degraded": r["degraded"],
             "target": make_target(r["degraded"], r["annotation"]),
             "annotation": r["annotation"]} for r in t.to_pylist()]


def bench_plain(model_dir: Path, rows: list[dict], steps: int, batch: int) -> dict:
    import numpy as np
    import torch

    from dutrain.models import load_model, load_processor
    from dutrain.sft.data import batch_order
    from dutrain.sft.loop import Batcher

    torch.manual_seed(0)
    proc, model = load_processor(model_dir), load_model(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = Batcher(proc, rows, torch.device("cpu"))
    order = batch_order(len(rows), batch, 0, 0, 0)
    times, tokens = [], []
    for _ in range(steps):
        _, idx = next(order)
        t0 = time.perf_counter()
        x = b(idx)
        loss = model(**x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(float(x["attention_mask"].sum()))
    warm = slice(3, None)
    s = statistics.median(times[warm])
    return {"s_per_step": s, "samples_per_s": batch / s,
            "tokens_per_s": float(np.mean(tokens[warm])) / s}


def bench_ray(data: str, workers: int, steps: int, batch: int, threads: int) -> dict:
    from mlflow import MlflowClient

    from dutrain.config import load_config
    from dutrain.config.sft import SFTConfig
    from dutrain.sft.run import run

    with tempfile.TemporaryDirectory() as d:
        db = f"sqlite:///{d}/mlflow.db"
        log_every = max(2, steps // 5)
        cfg = load_config(SFTConfig, overrides=[
            f"dataset={data}", f"output={d}/out", f"num_workers={workers}",
            f"cpus_per_worker={threads}", f"batch_size={batch}", f"max_steps={steps}",
            "warmup_steps=1", f"log_every={log_every}", f"eval_every={10 * steps}",
            f"checkpoint_every={10 * steps}", "final_eval_samples=0", "val_samples=8",
            f"tracking.uri={db}", "tracking.experiment=bench"])
        t0 = time.perf_counter()
        run(cfg)
        wall = time.perf_counter() - t0
        c = MlflowClient(db)
        r = c.search_runs([c.get_experiment_by_name("bench").experiment_id])[0]
        sps = [m.value for m in sorted(c.get_metric_history(r.info.run_id, "train/samples_per_s"),
                                       key=lambda m: m.step)][1:]
        tps = [m.value for m in sorted(c.get_metric_history(r.info.run_id, "train/tokens_per_s"),
                                       key=lambda m: m.step)][1:]
    return {"samples_per_s": statistics.median(sps), "tokens_per_s": statistics.median(tps),
            "s_per_step": workers * batch / statistics.median(sps), "wall_seconds": wall}


def bench_trl(model_dir: Path, rows: list[dict], steps: int, batch: int) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from dutrain.io.dataset import decode_png
    from dutrain.models import load_model, load_processor, messages, to_pil

    torch.manual_seed(0)
    proc, model = load_processor(model_dir), load_model(model_dir)
    conv = messages("x")
    ds = datasets.Dataset.from_list([{
        "images": [to_pil(decode_png(r["degraded"]))], "prompt": conv[:1],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": r["target"]}]}],
    } for r in rows])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as d:
        args = TRLConfig(output_dir=d, per_device_train_batch_size=batch, max_steps=steps,
                         learning_rate=1e-3, logging_steps=steps, save_strategy="no",
                         report_to=[], bf16=False, gradient_checkpointing=False, use_cpu=True,
                         max_length=None, dataloader_num_workers=0, completion_only_loss=True)
        SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=proc,
                   callbacks=[Clock()]).train()
    s = statistics.median(times[3:])
    return {"s_per_step": s, "samples_per_s": batch / s}


def bench_gpu_3b(steps: int = 10, batch: int = 8) -> dict:
    """Qwen2.5-VL-3B-shaped model, random weights, bf16 autocast on one GPU: tokens/s and MFU."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                         num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [16, 24, 24]},
                         tie_word_embeddings=True),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=2048, patch_size=14, spatial_merge_size=2,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to("cuda", dtype=torch.bfloat16)
    model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    # a 448x448 image → 32x32 patches → 256 image tokens, plus 56 prompt and 200 answer tokens
    grid = torch.tensor([[1, 32, 32]] * batch, device="cuda")
    pix = torch.randn(batch * 1024, 3 * 2 * 14 * 14, device="cuda", dtype=torch.bfloat16)
    n_img, n_txt = 256, 256
    ids = torch.randint(0, 150000, (batch, n_img + n_txt), device="cuda")
    ids[:, 1:1 + n_img] = 151655
    labels = ids.clone()
    labels[:, :1 + n_img + 56] = -100
    mm = (ids == 151655).long()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels, pixel_values=pix, image_grid_thw=grid,
                         mm_token_type_ids=mm).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times[2:])
    tokens = batch * (n_img + n_txt)
    flops = 6 * n_params * tokens * (4 / 3)  # 6N per token, +1/3 for recomputed activations
    peak = 989e12  # H100/H200 SXM dense bf16 peak
    return {"device": torch.cuda.get_device_name(), "params": n_params, "s_per_step": s,
            "tokens_per_s": tokens / s,
            "mfu": flops / s / peak, "note": "MFU counts 8N FLOPs per token (6N + recompute)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--only", default="plain,ray_1w,ray_2w,trl,gpu")
    a = ap.parse_args()
    only = set(a.only.split(","))
    out: dict = {"steps": a.steps, "batch": a.batch, "cores": os.cpu_count(),
                 "load_average_1m_start": os.getloadavg()[0]}
    import torch
    if "gpu" in only and torch.cuda.is_available():
        out["gpu_3b"] = bench_gpu_3b()
    only.discard("gpu")
    if only:
        import ray

        from dutrain.models import tiny_model
        model_dir = tiny_model()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        with tempfile.TemporaryDirectory() as d:
            data = make_dataset(Path(d) / "ds", a.samples)
            rows = load_rows(data, 256)
            threads = torch.get_num_threads()
            if "plain" in only:
                out["plain"] = bench_plain(model_dir, rows, a.steps, a.batch)
            if "ray_1w" in only:
                out["ray_1w"] = bench_ray(data, 1, a.steps, a.batch, threads)
            if "ray_2w" in only:
                out["ray_2w"] = bench_ray(data, 2, a.steps, a.batch, 1)
            if "trl" in only:
                torch.set_num_threads(threads)
                out["trl"] = bench_trl(model_dir, rows, a.steps, a.batch)
            if "plain" in only and len(only) > 1:
                # again at the end: on a shared machine the load drifts; compare with the mean
                torch.set_num_threads(threads)
                out["plain_end"] = bench_plain(model_dir, rows, a.steps, a.batch)
        ray.shutdown()
        if "plain" in out:
            ref = statistics.mean(out[k]["samples_per_s"] for k in ("plain", "plain_end")
                                  if k in out)
            for k in ("ray_1w", "ray_2w", "trl"):
                if k in out:
                    out[f"{k}_vs_plain_samples_per_s"] = out[k]["samples_per_s"] / ref
    out["load_average_1m_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
