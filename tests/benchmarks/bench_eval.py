"""Evaluation throughput (samples/s) with 1 and 2 vLLM CPU workers (Ray actors), plus the two
baselines, on the tiny model. Prints one JSON object.

    .venv/bin/python tests/benchmarks/bench_eval.py [--samples 32] [--max-tokens 96]

Greedy decoding of the random tiny model loops until `--max-tokens` on (nearly) every sample,
so samples cost about the same number of tokens; tokens/s counts the tokens actually generated.
Start-up (Ray actor + engine) is reported apart from the generation time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from dutrain.runtime.vllm_env import set_vllm_env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    set_vllm_env()
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import ray
    from test_eval_data import write_dataset

    from dutrain.config import load_config
    from dutrain.config.eval import EvalConfig
    from dutrain.evaluate.run import evaluate

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    root = write_dataset(tmp / "ds", {"train": 64, "test": args.samples}, size=128, seed=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    result: dict = {"samples": args.samples, "image_size": 128, "max_tokens": args.max_tokens,
                    "batch_size": args.batch_size, "cpus": os.cpu_count()}
    for workers in (1, 2):
        cfg = load_config(EvalConfig, overrides=[
            f"dataset={root}", "model=tiny", "splits=[test]", f"output={tmp / f'w{workers}'}",
            "tracking.enabled=false", "plots=false", f"generation.workers={workers}",
            f"generation.batch_size={args.batch_size}", f"generation.max_tokens={args.max_tokens}",
            "generation.temperature=0"], verb="eval")
        t0 = time.perf_counter()
        m = evaluate(cfg)["metrics"]
        result[f"vllm_{workers}_workers"] = {
            "samples_per_s": round(m["eval/samples_per_s"], 2),
            "tokens_per_s": round(m["eval/tokens_per_s"], 1),
            "startup_s": round(m["eval/startup_seconds"], 1),
            "generate_s": round(m["eval/generate_seconds"], 2),
            "wall_s": round(time.perf_counter() - t0, 1)}
    w1, w2 = result["vllm_1_workers"], result["vllm_2_workers"]
    result["speedup_2_vs_1"] = round(w2["samples_per_s"] / w1["samples_per_s"], 2)
    for b in ("baseline:classical",):
        cfg = load_config(EvalConfig, overrides=[
            f"dataset={root}", f"model={b}", "splits=[test]", f"output={tmp / b[9:]}",
            "tracking.enabled=false", "plots=false", "calibration_samples=64"], verb="eval")
        m = evaluate(cfg)["metrics"]
        result[b] = {"samples_per_s": round(m["eval/samples_per_s"], 1),
                     "calibration_s": round(m["eval/calibration_seconds"], 2)}
    ray.shutdown()
    print(json.dumps(result, indent=1))
