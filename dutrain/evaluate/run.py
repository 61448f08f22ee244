"""`dutrain eval`: completions from a model, a baseline or a predictions file → metrics, report,
plots and an MLflow run (tag dutrain.stage=eval, param `model`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dutrain.config.eval import EvalConfig
from dutrain.config.openai import PREFIX as OPENAI_PREFIX
from dutrain.errors import UserError
from dutrain.io.dataset import decode_png, read_table
from dutrain.models import answer_grid, prompt_mode, resolve_model
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.tracking import stage_run

from .baselines import fit_baseline
from .generate import vllm_completions
from .lenient import lenient_metrics
from .metrics import by_source, confusion, confusion_labels, score_sample, split_metrics
from .openai_client import OpenAIClient
from .predictions import read_predictions, write_predictions
from .quality import psnr
from .report import markdown_report, notes_for, summary_table, write_plots


def _rows(cfg: EvalConfig, split: str, images: bool) -> list[dict[str, Any]]:
    """The split's rows, each with `psnr`: how visible its degradation is (the degraded image
    against the clean one, whatever the source, so every source reports the same metrics; None
    where either image does not decode — an image source records that row's own failure). The
    clean bytes are not kept, the degraded ones only for a source that reads images."""
    cols = ["sample_id", "split", "annotation", "degraded", "clean"]
    rows = read_table(cfg.dataset, [split], cols, cfg.limit, cfg.storage).to_pylist()
    for r in rows:
        try:
            r["psnr"] = psnr(decode_png(r["clean"]), decode_png(r["degraded"]))
        except (OSError, ValueError, TypeError):
            r["psnr"] = None
        del r["clean"]
        if not images:
            del r["degraded"]
    return rows


def _baseline(cfg: EvalConfig) -> tuple[Any, dict[str, Any]]:
    b = fit_baseline(str(cfg.model), cfg.dataset, cfg.calibration_samples, cfg.storage)
    return b, b.describe()


def _completions(cfg: EvalConfig, rows: dict[str, list[dict[str, Any]]]) -> tuple[
        dict[str, str | None], dict[str, Any], dict[str, float]]:
    """sample_id → completion (None: no prediction), notes info, timing metrics."""
    info: dict[str, Any] = {}
    timing: dict[str, float] = {}
    wanted = [r for split_rows in rows.values() for r in split_rows]
    if cfg.source == "predictions":
        preds = read_predictions(cfg.predictions, cfg.storage)
        known = read_table(cfg.dataset, None, ["sample_id", "split"], None, cfg.storage)
        known_split = dict(zip(known.column("sample_id").to_pylist(),
                               known.column("split").to_pylist()))
        info["unknown_ids"] = sorted(s for s in preds.completions if s not in known_split)
        info["other_splits"] = sum(1 for s in preds.completions
                                   if s in known_split and known_split[s] not in cfg.splits)
        info["malformed"] = preds.malformed
        info["duplicates"] = preds.duplicates
        return {r["sample_id"]: preds.completions.get(r["sample_id"]) for r in wanted}, info, timing
    t0 = time.perf_counter()
    if cfg.source.startswith(OPENAI_PREFIX):
        return _openai_completions(cfg, wanted, info, timing)
    if cfg.source.startswith("baseline:"):
        baseline, info["baseline"] = _baseline(cfg)
        timing["eval/calibration_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        texts = baseline.complete([decode_png(r["degraded"]) if "degraded" in r else None
                                   for r in wanted])
        dt = time.perf_counter() - t1
        timing["eval/samples_per_s"] = len(wanted) / dt if dt > 0 else 0.0
        return {r["sample_id"]: t for r, t in zip(wanted, texts)}, info, timing
    model_dir = str(resolve_model(cfg.source, storage=cfg.storage))
    info["prompt"] = prompt_mode(model_dir)  # what the engines prompt the model with
    info["grid_factor"] = answer_grid(model_dir)  # the grid its answers are read on
    with ray_session(cfg.ray):
        texts, stats = vllm_completions(model_dir, [r["degraded"] for r in wanted],
                                        cfg.generation)
    timing.update({"eval/samples_per_s": stats.samples_per_s,
                   "eval/tokens_per_s": stats.tokens_per_s,
                   "eval/startup_seconds": stats.startup_seconds,
                   "eval/generate_seconds": stats.generate_seconds,
                   "eval/workers": float(stats.workers)})
    return {r["sample_id"]: t for r, t in zip(wanted, texts)}, info, timing


def _openai_client(cfg: EvalConfig) -> Any:
    cache = cfg.openai.cache or str(Path(cfg.output) / "openai_cache")
    return OpenAIClient(cfg.source, cfg.openai, cfg.generation, cache)


def _openai_completions(cfg: EvalConfig, wanted: list[dict[str, Any]], info: dict[str, Any],
                        timing: dict[str, float]) -> tuple[
        dict[str, str | None], dict[str, Any], dict[str, float]]:
    """Completions from an OpenAI-compatible endpoint; raw responses and per-sample errors go
    to `info["openai_rows"]` (completions.jsonl)."""
    client = _openai_client(cfg)
    info["openai_model"] = client.check()
    replies = client.complete([r["degraded"] for r in wanted])
    st = client.stats
    timing.update({"eval/samples_per_s": len(wanted) / st.seconds if st.seconds > 0 else 0.0,
                   "eval/generate_seconds": st.seconds,
                   "openai/requests": float(st.requests), "openai/cache_hits": float(st.cache_hits),
                   "openai/retries": float(st.retries), "openai/errors": float(st.errors)})
    info["openai_rows"] = {r["sample_id"]: {"response": x.raw, "error": x.error,
                                            "cached": x.cached}
                           for r, x in zip(wanted, replies)}
    info["openai_errors"] = dict(st.error_kinds)
    return {r["sample_id"]: x.completion for r, x in zip(wanted, replies)}, info, timing


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation and write every output; returns metrics and where things are."""
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    images = cfg.source != "predictions" and cfg.source != "baseline:prior"
    rows = {s: _rows(cfg, s, images) for s in cfg.splits}
    empty = [s for s, r in rows.items() if not r]
    if len(empty) == len(rows):
        raise UserError(f"dataset '{cfg.dataset}' has no rows in split(s) "
                        f"{', '.join(cfg.splits)}")
    comps, info, timing = _completions(cfg, rows)
    weights, grid = cfg.rewards.as_dict(), info.get("grid_factor", 1)
    scored = {s: [score_sample(r["sample_id"], s, comps[r["sample_id"]], r["annotation"], weights,
                               grid, r.get("psnr")) for r in rs] for s, rs in rows.items() if rs}
    info["missing"] = {s: sum(x.missing for x in sc) for s, sc in scored.items()}
    metrics: dict[str, float] = {}
    for s, sc in scored.items():
        metrics.update(split_metrics(s, sc))
    if "openai_rows" in info:
        for s, sc in scored.items():
            metrics.update(lenient_metrics(s, sc, comps))
    if cfg.source == "predictions":
        metrics["predictions/unknown_sample_ids"] = float(len(info["unknown_ids"]))
        metrics["predictions/malformed_lines"] = float(len(info["malformed"]))
    metrics.update(timing)
    confusions = {s: confusion(sc) for s, sc in scored.items()}
    splits = list(scored)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    write_predictions(str(out / "completions.jsonl"),
                      ({"sample_id": x.sample_id, "split": x.split,
                        "completion": comps[x.sample_id], **x.scores,
                        **info.get("openai_rows", {}).get(x.sample_id, {})}
                       for s in splits for x in scored[s]))
    labels_true, labels_pred = confusion_labels()
    (out / "confusion.json").write_text(json.dumps(
        {"rows": labels_true, "columns": labels_pred, "splits": confusions}, indent=1))
    if "baseline" in info:
        (out / "baseline.json").write_text(json.dumps(info["baseline"], indent=1))
    plots = write_plots(scored, confusions, out) if cfg.plots else {}
    notes = notes_for(info) + [f"{s}: no rows in the dataset" for s in empty]
    if info.get("prompt") == "cues":
        notes.append("prompt: cues (the model's dutrain_prompt.json): each image's measured cues "
                     "were given in the prompt")
    if info.get("grid_factor", 1) > 1:
        notes.append(f"answer grid: factor {info['grid_factor']} (the model's dutrain_prompt.json):"
                     f" answers are read on every key's grid {info['grid_factor']}× coarser; "
                     f"value_nmae_grid is the error that grid alone costs")
    notes += [f"openai: {n} sample(s) without an answer: {kind} (see completions.jsonl)"
              for kind, n in sorted(info.get("openai_errors", {}).items())]
    sources = {s: by_source(sc) for s, sc in scored.items()}
    (out / "sources.json").write_text(json.dumps(sources, indent=1))
    report = markdown_report(cfg.system, cfg.dataset, splits, metrics, confusions, notes, plots,
                             sources)
    (out / "report.md").write_text(report)
    summary = summary_table(metrics, splits, cfg.system)
    (out / "summary.txt").write_text(summary + "\n")
    return {"metrics": metrics, "summary": summary, "notes": notes, "output": out}


def preflight_eval(cfg: EvalConfig) -> None:
    """Inputs, output and tracking server, checked before any model or Ray starts."""
    preflight.dataset("dataset", cfg.dataset, cfg.storage)
    if cfg.source == "predictions":
        if "://" not in str(cfg.predictions):
            preflight.existing_file("predictions", cfg.predictions, "a JSONL file")
    elif cfg.source.startswith(OPENAI_PREFIX):
        _openai_client(cfg).check()  # reachable, key accepted, model known
    else:
        preflight.model("model", cfg.source, cfg.storage)
    preflight.output_location("output", cfg.output)
    preflight.tracking(cfg.tracking)


def run_eval(cfg: EvalConfig) -> int:
    """The `dutrain eval` runner: 0, or a UserError (exit 2) when the inputs are unusable."""
    preflight_eval(cfg)
    label = cfg.system.rstrip("/").rsplit("/", 1)[-1]
    name = cfg.tracking.run_name or f"eval-{label}"  # stable: `compare runs=[eval-x]` finds it
    with stage_run(cfg, "eval", run_name=name, params={"model": cfg.system}) as run:
        res = evaluate(cfg)
        out: Path = res["output"]
        run.log_metrics(res["metrics"])
        for name in ("metrics.json", "report.md", "summary.txt", "confusion.json",
                     "completions.jsonl", "baseline.json"):
            run.log_artifact(out / name)
        if (out / "plots").is_dir():
            run.log_artifact(out / "plots", "plots")
        run.set_tags({"dutrain.model": cfg.system})
    print(res["summary"])
    for n in res["notes"]:
        print(f"note: {n}")
    print(f"report: {out / 'report.md'}  plots: {out / 'plots'}"
          + (f"  mlflow run: {run.run_id}" if run.active else ""))
    return 0
