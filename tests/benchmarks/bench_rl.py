"""RL benchmark (issue 5): step-time split sync vs async, weight sync vs size, TRL side by side.

    .venv/bin/python tests/benchmarks/bench_rl.py [--steps 6] [--learners 2] [--trl-threads 2]
        [--skip-trl] [--skip-sizes] [--skip-dutrain]

Same workload for every system: the tiny Qwen2-VL, 8 prompts (128×128 images) × 4 completions
of up to 48 tokens, toy reward (names `haze`), one optimisation step per batch, fp32 on CPU.
- dutrain sync and async (one-step-off): medians over `--steps` steps after 2 warm-up steps of
  the per-step split (rollout = engine generate time, reward, learner = slowest rank's step,
  sync = serialise + load, overhead = step - their sum in sync mode) and the goal ratio
  async step / max(rollout, learner) (≤ 1.15 means rollouts and learning really overlap);
- TRL `GRPOTrainer` (`use_vllm=False`) on the same model, prompts, group size, completion length
  and reward: seconds per optimisation step and the ratio dutrain / TRL (goal ≤ 0.5);
- weight sync (state dict → safetensors bytes → vLLM reload + cache resets) versus parameter
  count, on tiny models of growing width.
Prints one JSON document, with the 1-minute load average after each timed phase (on a shared
machine, compare only phases that ran under similar load).
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # keep stdout for the JSON result

P, G, MAX_TOKENS, WARMUP = 8, 4, 48, 2


def make_dataset(root: Path) -> str:
    from dutrain.config import load_config
    from dutrain.config.generate import GenerateConfig
    from dutrain.data.generate import run

    cfg = load_config(GenerateConfig, overrides={
        "output": str(root), "samples": 160, "image_size": 128, "progress": False,
        "tracking": {"enabled": False}, "ray": {"num_cpus": 2}})
    run(cfg)
    return str(root)


def dutrain_run(dataset: str, out: Path, mode: str, steps: int, learners: int) -> dict:
    from dutrain.config import load_config
    from dutrain.config.rl import RLConfig
    from dutrain.rl.controller import Controller, prepare
    from dutrain.runtime.cluster import ray_session

    cfg = load_config(RLConfig, overrides=[
        f"dataset={dataset}", f"output={out}", f"mode={mode}", f"steps={steps + WARMUP}",
        f"prompts_per_step={P}", f"group_size={G}", f"rollout.max_tokens={MAX_TOKENS}",
        "reward.kind=type_mention", f"learner.workers={learners}",
        f"learner.cpus_per_worker={1 / learners}",
        "rollout.workers=1", "rollout.cpus_per_worker=1", "learner.lr=1e-3", "eval_every=0",
        "checkpoint_every=0", "samples_to_log=0", "tracking.enabled=false", "ray.num_cpus=2"])
    with ray_session(cfg.ray):
        ctl = Controller(cfg, prepare(cfg))
        try:
            ctl.start()
            hist = ctl.fit()[WARMUP:]
        finally:
            ctl.shutdown()

    def med(key: str) -> float:
        vals = [m[key] for m in hist if key in m]
        return round(statistics.median(vals), 4) if vals else float("nan")

    split = {"step": med("rl/step_seconds"), "rollout": med("rl/rollout_seconds"),
             "rollout_wait": med("rl/rollout_wait_seconds"), "reward": med("rl/reward_seconds"),
             "learner": med("rl/learner_seconds"), "learner_wait": med("rl/learner_wait_seconds"),
             "sync": med("rl/sync_seconds"), "staleness_max": max(m["rl/staleness"] for m in hist)}
    if mode == "sync":
        split["overhead"] = round(split["step"] - split["rollout"] - split["reward"]
                                  - split["learner"] - split["sync"], 4)
    else:
        split["idle"] = round(split["rollout_wait"], 4)  # driver blocked on a late rollout
    split["rollout_tokens_per_s"] = med("rl/rollout_tokens_per_s")
    return split


def trl_run(dataset: str, out: Path, steps: int, threads: int) -> dict:
    """TRL GRPOTrainer, generation with transformers (use_vllm=False), same workload.

    `threads`: torch threads of the trainer process (2 uses both cores like dutrain's actors do
    together; on a loaded machine 2 OpenMP threads can stall on each other, so 1 is measured too).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dutrain.io.dataset import iter_samples
    from dutrain.models import load_model, messages, resolve_model, to_pil
    from dutrain.rl.scoring import type_mention_reward

    model_dir = str(resolve_model("tiny"))
    rows = [{"prompt": messages(), "image": to_pil(s.degraded)}
            for s in iter_samples(dataset, ["train"], limit=P * (steps + WARMUP))]
    ds = Dataset.from_list(rows)

    def reward(completions, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [type_mention_reward(t, "haze")["total"] for t in texts]

    torch.set_num_threads(threads)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=P * G, num_generations=G,
        generation_batch_size=P * G, max_completion_length=MAX_TOKENS, learning_rate=1e-3,
        beta=0.0, loss_type="dapo", temperature=1.0, max_steps=steps + WARMUP,
        logging_steps=10**6, disable_tqdm=True, save_strategy="no", report_to=[], bf16=False,
        gradient_checkpointing=False,
        use_vllm=False, use_cpu=True, seed=0, dataloader_num_workers=0,
        remove_unused_columns=False)
    trainer = GRPOTrainer(model=load_model(model_dir), reward_funcs=reward, args=args,
                          train_dataset=ds,
                          processing_class=AutoProcessor.from_pretrained(model_dir),
                          callbacks=[Timer()])
    trainer.train()
    return {"step": round(statistics.median(times[WARMUP:]), 4), "threads": threads,
            "steps_timed": len(times[WARMUP:])}


def sync_vs_size() -> list[dict]:
    """Weight push seconds (serialise + engine reload) for tiny models of growing width."""
    from dutrain.models import TinySpec, load_model, tiny_model
    from dutrain.models.engine import VLLMEngine, state_dict_bytes

    out = []
    for hidden, layers, inter in ((128, 2, 512), (256, 4, 1024), (512, 4, 2048)):
        spec = TinySpec(hidden_size=hidden, num_layers=layers, intermediate_size=inter,
                        num_heads=4, num_kv_heads=2,
                        mrope_section=(hidden // 32, hidden // 32 * 3 // 2, hidden // 32 * 3 // 2))
        d = tiny_model(spec)
        model = load_model(d)
        engine = VLLMEngine(d, max_num_seqs=8)
        ser, load = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            payload = state_dict_bytes(model.state_dict())
            t1 = time.perf_counter()
            engine.update_weights(payload)
            ser.append(t1 - t0)
            load.append(time.perf_counter() - t1)
        engine.close()
        out.append({"params": sum(p.numel() for p in model.parameters()),
                    "bytes": len(payload), "serialize_s": round(statistics.median(ser), 4),
                    "load_s": round(statistics.median(load), 4)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--trl-threads", type=int, default=2, help="torch threads of the TRL run")
    ap.add_argument("--skip-dutrain", action="store_true", help="only TRL (and sizes)")
    ap.add_argument("--skip-sizes", action="store_true")
    ap.add_argument("--learners", type=int, default=2, help="learner actors sharing 1 CPU")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    dataset = make_dataset(tmp / "data")
    res: dict = {"workload": {"prompts": P, "group": G, "max_tokens": MAX_TOKENS,
                              "steps_timed": a.steps, "cpus": os.cpu_count(),
                              "layout": f"1 rollout actor (1 CPU) + {a.learners} learner "
                                        f"actor(s) sharing 1 CPU"}}
    # the machine may be shared: record its load around each timed phase
    if not a.skip_dutrain:
        for mode in ("sync", "async"):
            res[mode] = dutrain_run(dataset, tmp / mode, mode, a.steps, a.learners)
            res[mode]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        s, x = res["sync"], res["async"]
        res["async_over_sync"] = round(x["step"] / s["step"], 3)
        res["async_over_max_rollout_learner"] = round(x["step"] / max(x["rollout"], x["learner"]),
                                                      3)
    if not a.skip_trl:
        res["trl_grpo"] = trl_run(dataset, tmp / "trl", a.steps, a.trl_threads)
        res["trl_grpo"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        for mode in ("sync", "async"):
            if mode in res:
                res[f"dutrain_{mode}_over_trl"] = round(res[mode]["step"] / res["trl_grpo"]["step"],
                                                        3)
    if not a.skip_sizes:
        res["weight_sync_vs_params"] = sync_vs_size()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
