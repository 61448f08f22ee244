"""SFT alone vs SFT + offline vs SFT + online GRPO vs SFT + offline + online, on held-out test
photos, through the shipped stage verbs and their demo configs (issue 20's comparison). Prints
JSON: per arm and seed the test metrics (type accuracy, per-type recall, value nMAE, reward) and
each stage's wall seconds.

    .venv/bin/python tests/benchmarks/bench_offline_arms.py --sft runs/demo/sft/final \
        --dataset runs/demo/data --out runs/arms [--seeds 0 1] [--limit 800] [key=value ...]

Offline and RL start from the same SFT model; `seed` goes to each stage (offline: pair order and
the sampling seed; rl: rollouts and prompt order). Extra `offline.KEY=VALUE` / `rl.KEY=VALUE`
arguments override those stages' demo configs. Finished steps (a `final/` with its metrics, an
eval's metrics.json) are reused, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "dutrain.cli"]
KEYS = ("format_valid", "type_exact", "type_f1", "value_nmae", "reward/total")


def _run(verb: str, config: str, overrides: list[str], log: Path) -> float:
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.run([*CLI, verb, "--config", config, *overrides], stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{verb} failed (exit {proc.returncode}); see {log}")
    return time.time() - t0


def _stage(verb: str, out: Path, overrides: list[str], times: dict[str, float]) -> None:
    if (out / "final" / "config.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    times[f"{out.name}"] = _run(verb, f"workflows/configs/{verb}/demo.yaml",
                                [f"output={out}", *overrides], out.parent / f"{out.name}.log")


def _eval(model: Path, args: argparse.Namespace, out: Path, times: dict[str, float]) -> dict:
    if not (out / "metrics.json").exists():
        times[f"eval_{out.name}"] = _run(
            "eval", "workflows/configs/eval/demo.yaml",
            [f"model={model}", f"dataset={args.dataset}", f"output={out}", "splits=[test]",
             f"limit={args.limit}", "tracking.enabled=false"], out.parent / f"{out.name}.log")
    m = json.loads((out / "metrics.json").read_text())
    row = {k: m.get(f"test/{k}") for k in KEYS}
    row["recall"] = {k.split("/", 1)[1]: round(v, 3) for k, v in m.items()
                     if k.startswith("test/type_recall/")}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", required=True, help="the SFT model every arm starts from")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", default="runs/arms")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--limit", type=int, default=800, help="test rows evaluated")
    ap.add_argument("overrides", nargs="*", help="offline.KEY=VALUE or rl.KEY=VALUE")
    args = ap.parse_args()
    extra = {"offline": [], "rl": []}
    for o in args.overrides:
        stage, _, kv = o.partition(".")
        if stage not in extra or "=" not in kv:
            ap.error(f"override {o!r}: expected offline.KEY=VALUE or rl.KEY=VALUE")
        extra[stage].append(kv)
    out = Path(args.out)
    evals = out / "eval"
    evals.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    common = [f"dataset={args.dataset}", "tracking.enabled=false"]
    rows: dict[str, dict] = {"sft": _eval(Path(args.sft), args, evals / "sft", times)}
    for s in args.seeds:
        off, rl, offrl = out / f"offline_s{s}", out / f"rl_s{s}", out / f"offline_rl_s{s}"
        _stage("offline", off, [f"model={args.sft}", f"seed={s}", f"generation.seed={s}",
                                *common, *extra["offline"]], times)
        rows[f"sft+offline/s{s}"] = _eval(off / "final", args, evals / off.name, times)
        _stage("rl", rl, [f"model={args.sft}", f"seed={s}", *common, *extra["rl"]], times)
        rows[f"sft+rl/s{s}"] = _eval(rl / "final", args, evals / rl.name, times)
        _stage("rl", offrl, [f"model={off / 'final'}", f"seed={s}", *common, *extra["rl"]],
               times)
        rows[f"sft+offline+rl/s{s}"] = _eval(offrl / "final", args, evals / offrl.name, times)
    print(json.dumps({"arms": rows, "seconds": {k: round(v, 1) for k, v in times.items()},
                      "seeds": args.seeds, "limit": args.limit}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
