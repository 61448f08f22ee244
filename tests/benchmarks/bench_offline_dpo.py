"""DPO step cost: TRL's DPOTrainer (what `dutrain offline` runs) against a plain PyTorch DPO loop,
on the same tiny model, the same preference pairs, batch, learning rate and beta, one process on
CPU. Prints JSON.

    .venv/bin/python tests/benchmarks/bench_offline_dpo.py [--steps 16] [--batch 4]

Pairs: small generated images (tests/integration/test_eval_data.write_dataset); chosen = the
row's true answer, rejected = another row's answer (`make_target(..., "answer")`), so both
methods train on identical texts without a vLLM run.
- trl: `DPOTrainer` as `dutrain.offline.dpo` builds it (conversational images/prompt/chosen/
  rejected), step times from a callback (on_step_begin → on_step_end: data collation inside the
  step is counted, as in the plain loop);
- plain: the policy and a frozen copy as reference; per step `encode_sft` of chosen and
  rejected in one batch (images processed once), one policy forward with gradients, one
  reference forward without, loss −log σ(β·((π_c − ref_c) − (π_r − ref_r))), clip, AdamW.
The median step time after the first 3 steps (wall and this process's CPU time: on a shared
machine the CPU time is the steadier figure); steps/s and pairs/s; the first and last losses
(the first is log 2 = 0.693 for both: policy = reference); the load average around the run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
WARM = 3


def make_pairs(root: Path, n: int) -> list[dict]:
    from test_eval_data import write_dataset

    from dutrain.io.dataset import decode_png, read_table
    from dutrain.sft.data import make_target

    ds = write_dataset(root / "ds", {"train": n}, size=96, seed=1)
    rows = read_table(str(ds), ["train"], ["sample_id", "degraded", "annotation"]).to_pylist()
    return [{"prompt_id": r["sample_id"], "image": decode_png(r["degraded"]),
             "chosen": make_target(r["degraded"], r["annotation"], "answer"),
             "rejected": make_target(r["degraded"], rows[(i + 1) % len(rows)]["annotation"],
                                     "answer")}
            for i, r in enumerate(rows)]


def bench_trl(model_dir: str, pairs: list[dict], steps: int, batch: int, lr: float,
              beta: float) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from dutrain.config import load_config
    from dutrain.config.offline import OfflineConfig
    from dutrain.models import load_model, load_processor
    from dutrain.offline.dpo import dpo_args, dpo_dataset

    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)

    torch.manual_seed(0)
    cfg = load_config(OfflineConfig, overrides=[f"lr={lr}", f"beta={beta}", f"batch_size={batch}",
                                                f"max_steps={steps}", f"checkpoint_every={10**6}"])
    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(model=load_model(model_dir), args=dpo_args(cfg, out),
                             train_dataset=dpo_dataset(pairs, {p["prompt_id"]: p["image"]
                                                               for p in pairs}),
                             processing_class=load_processor(model_dir), callbacks=[Clock()])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs (no tqdm)
            trainer.train()
        wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return _rates(times, cpu, batch) | {"wall_s": wall, "loss_first": losses[0],
                                        "loss_last": losses[-1]}


def bench_plain(model_dir: str, pairs: list[dict], steps: int, batch: int, lr: float,
                beta: float) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dutrain.models import encode_images, encode_sft, load_model, load_processor

    def logps(model, b):
        labels = b.pop("labels")
        logits = model(**b).logits[:, :-1].float()
        tgt = labels[:, 1:]
        lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        return (lp * (tgt != -100)).sum(-1)

    torch.manual_seed(0)
    proc, policy = load_processor(model_dir), load_model(model_dir)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(steps * batch
                                                                      // len(pairs) + 1)])
    times, cpu, losses = [], [], []
    t_all = time.perf_counter()
    for s in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        pb = [pairs[int(i)] for i in order[s * batch:(s + 1) * batch]]
        ims = [p["image"] for p in pb]
        v = encode_images(proc, ims)  # once; chosen and rejected rows share it
        both = {k: torch.cat([v[k], v[k]]) for k in ("pixel_values", "image_grid_thw")}
        b = encode_sft(proc, ims + ims, [p["chosen"] for p in pb] + [p["rejected"] for p in pb],
                       both)  # chosen and rejected in one forward, as TRL does
        with torch.no_grad():
            ref_lp = logps(ref, dict(b))
        lp = logps(policy, dict(b))
        n = len(pb)
        loss = -F.logsigmoid(beta * ((lp[:n] - ref_lp[:n]) - (lp[n:] - ref_lp[n:]))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(float(loss.detach()))
    return _rates(times, cpu, batch) | {"wall_s": time.perf_counter() - t_all,
                                        "loss_first": losses[0], "loss_last": losses[-1]}


def _rates(times: list[float], cpu: list[float], batch: int) -> dict:
    s = statistics.median(times[WARM:])
    return {"steps": len(times), "s_per_step": s, "steps_per_s": 1 / s,
            "pairs_per_s": batch / s, "cpu_s_per_step": statistics.median(cpu[WARM:])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    import torch
    import transformers
    import trl

    from dutrain.models import tiny_model

    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        pairs = make_pairs(Path(d), a.pairs)
        model_dir = str(tiny_model())
        plain = bench_plain(model_dir, pairs, a.steps, a.batch, a.lr, a.beta)
        trl_r = bench_trl(model_dir, pairs, a.steps, a.batch, a.lr, a.beta)
    print(json.dumps({
        "what": "DPO step on the tiny model, CPU, one process: TRL DPOTrainer vs plain torch",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__},
        "threads": a.threads, "pairs": len(pairs), "batch": a.batch, "steps": a.steps,
        "lr": a.lr, "beta": a.beta, "warm_up_steps_excluded": WARM,
        "cores": os.cpu_count(), "load_avg_1m_before_after": [load_before[0],
                                                               os.getloadavg()[0]],
        "trl": trl_r, "plain": plain,
        "trl_s_per_step_over_plain": trl_r["s_per_step"] / plain["s_per_step"],
        "trl_cpu_s_per_step_over_plain": trl_r["cpu_s_per_step"] / plain["cpu_s_per_step"]},
        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
