"""Restoration with a predictor's answers: identity, oracle, the plain plan and the controlled
plan with and without its judge, on one dataset split in one run. Prints one JSON object.

    .venv/bin/python tests/benchmarks/bench_restore.py --data runs/demo/data \\
        --model runs/demo/rl/final [--limit 400] [--judge-rows 120]

`--model baseline:classical` needs no VLM. Without `--data` a small dataset is generated (the
classical baseline then, so it runs anywhere in a few minutes). Both controlled runs share the
predictor's answers' source and the val rows; the judge run also reports what the judge cost.
Per kind: mean PSNR over the split and per true type, the share of images more than 0.5 dB
below identity, and for the controlled plan the images touched and model calls per image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))


def _run(args: argparse.Namespace, out: Path, judge_rows: int) -> tuple[dict, float]:
    from dutrain.cli import main
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the verb prints its report: JSON alone on stdout
        rc = main(["restore", f"input={args.data}", "split=test", f"model={args.model}",
                   f"limit={args.limit}", "restore.plan=controlled", f"output={out}",
                   "tracking.enabled=false", f"restore.judge_rows={judge_rows}",
                   f"restore.calibration_limit={args.val}"])
    if rc != 0:
        raise SystemExit(f"dutrain restore failed (exit {rc})")
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - t0


def _summary(m: dict, kinds: tuple[str, ...]) -> dict:
    per = {k: {t.rsplit("/", 1)[1]: round(v, 2) for t, v in m.items()
               if t.startswith(f"test/psnr/{k}/")} for k in kinds}
    return {"psnr": {k: round(m[f"test/psnr/{k}"], 3) for k in kinds},
            "worse_than_identity": {k: round(m.get(f"test/worse_than_identity/{k}", 0.0), 3)
                                    for k in kinds if k != "identity"},
            "psnr_per_type": per,
            "types_below_identity": sorted(t for t, v in per[kinds[-1]].items()
                                           if v < per["identity"][t] - 1e-6)}


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", help="dataset root with train/val/test (default: generate one)")
    ap.add_argument("--model", default="baseline:classical")
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--val", type=int, default=160, help="val rows the thresholds see")
    ap.add_argument("--judge-rows", type=int, default=120)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    if not args.data:
        from test_eval_data import write_dataset
        args.data = str(write_dataset(tmp / "ds", {"train": 160, "val": 60, "test": 80}, size=96,
                                      seed=11, max_degradations=1, clean_fraction=0.1))
        args.limit = min(args.limit, 80)
    rules, t_rules = _run(args, tmp / "rules", 0)
    judged, t_judged = _run(args, tmp / "judge", args.judge_rows)
    kinds = ("identity", "oracle", "predicted", "controlled")
    print(json.dumps({
        "data": args.data, "model": args.model, "images": args.limit,
        "rules_only": {**_summary(rules, kinds), "seconds": round(t_rules, 1),
                       "touched": rules["restore/controlled/touched"]},
        "with_judge": {**_summary(judged, kinds), "seconds": round(t_judged, 1),
                       "touched": judged["restore/controlled/touched"],
                       "judge_seconds": round(judged["restore/controlled/judge_seconds"], 1),
                       "judge_records": judged["restore/controlled/judge_records"]},
        "model_calls_per_image": judged["restore/model_calls_per_image"],
        "judge_gain_db": round(judged["test/psnr/controlled"] - rules["test/psnr/controlled"],
                               3),
        "gain_over_identity_db": round(judged["test/psnr/controlled"]
                                       - judged["test/psnr/identity"], 3),
    }, indent=1))
