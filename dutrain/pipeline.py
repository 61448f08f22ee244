"""`dutrain pipeline`: generate → sft → [offline] → rl → eval → restore → compare, one parent
MLflow run (offline runs when listed in `stages`; rl then starts from its model).

Each stage runs in this process through its verb's own runner, as a child MLflow run of the
pipeline run (`DUTRAIN_PARENT_RUN_ID`), on the one Ray cluster the pipeline opened. A stage that
finishes writes `workdir/.pipeline/<stage>.json` (its resolved config hash and outputs); a rerun
skips stages whose marker matches their config, so only changed or forced stages (and the
stages after them) run again. A stage interrupted earlier continues (generate's unfinished plan,
sft/rl checkpoints) only if it had the same config and its inputs were not redone; otherwise it
starts afresh (`FRESH_START`), so a changed config never fails on, or resumes from, old outputs.
A failing stage stops the pipeline with its name and exit code.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dutrain.config import VERBS, replace, to_dict
from dutrain.config.pipeline import PIPELINE_STAGES, PipelineConfig
from dutrain.config.secrets import redacted
from dutrain.data.generate import is_finished, list_inputs
from dutrain.errors import UserError
from dutrain.io.storage import join
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.tracking import PARENT_ENV, PIPELINE_ENV, stage_run, tracking_uri


class PipelineError(UserError):
    """A stage's user error, named with the stage (one line, exit 2)."""


class StageFailed(Exception):
    """A stage that ended with a non-zero exit code other than a user error."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class StageJob:
    """One run of one verb within a stage (eval runs once per evaluated system)."""

    stage: str
    label: str
    verb: str
    config: Any


# ------------------------------------------------------------------------------------ wiring

def _stage_cfg(cfg: PipelineConfig, stage: str, **changes: Any) -> Any:
    """The stage's section with pipeline-level tracking/ray and the given keys changed."""
    section = getattr(cfg, stage)
    common = {}
    fields = to_dict(section)
    if "tracking" in fields:
        common["tracking"] = {**to_dict(cfg.tracking), "run_name": None}
    if "ray" in fields:
        common["ray"] = to_dict(cfg.ray)
    return replace(section, **common, **changes)


def store(cfg: PipelineConfig, *parts: str) -> str:
    """A path under storage_root (local or s3://), where data and checkpoints live."""
    return join(cfg.storage_root or cfg.workdir, *parts)


def checkpoint_of(cfg: PipelineConfig, stage: str) -> str:
    """Where the final model of `sft` or `rl` lands."""
    return store(cfg, stage, "final")


def evaluated_stage(cfg: PipelineConfig) -> str:
    """The stage whose model eval/restore use: `eval_model`, but sft's when eval_model is rl
    and rl does not run."""
    return "sft" if cfg.eval_model == "rl" and "rl" not in cfg.stages else cfg.eval_model


def rl_start(cfg: PipelineConfig) -> str:
    """The stage rl starts from: offline when it runs, else sft."""
    return "offline" if "offline" in cfg.stages else "sft"


def plan(cfg: PipelineConfig) -> list[StageJob]:
    w = Path(cfg.workdir)
    data = store(cfg, "data")
    model = checkpoint_of(cfg, evaluated_stage(cfg))
    jobs: list[StageJob] = []
    for stage in cfg.stages:
        if stage == "generate":
            jobs.append(StageJob(stage, "generate", "generate",
                                 _stage_cfg(cfg, stage, output=data)))
        elif stage == "sft":
            jobs.append(StageJob(stage, "sft", "sft", _stage_cfg(
                cfg, stage, dataset=data, output=store(cfg, "sft"))))
        elif stage == "offline":
            jobs.append(StageJob(stage, "offline", "offline", _stage_cfg(
                cfg, stage, dataset=data, model=checkpoint_of(cfg, "sft"),
                output=store(cfg, "offline"))))
        elif stage == "rl":
            jobs.append(StageJob(stage, "rl", "rl", _stage_cfg(
                cfg, stage, dataset=data, model=checkpoint_of(cfg, rl_start(cfg)),
                output=store(cfg, "rl"))))
        elif stage == "eval":
            systems = [model] + list(cfg.baselines)
            for system in systems:
                label = system.split(":", 1)[1] if system.startswith("baseline:") else "model"
                # baselines keep their own name (MLflow param `model` = "baseline:…")
                name = f"dutrain-{cfg.eval_model}" if label == "model" else None
                jobs.append(StageJob(stage, f"eval-{label}", "eval", _stage_cfg(
                    cfg, stage, dataset=data, model=system, output=str(w / "eval" / label),
                    name=name)))
        elif stage == "restore":
            jobs.append(StageJob(stage, "restore", "restore", _stage_cfg(
                cfg, stage, input=data, split="test", model=model, output=str(w / "restore"))))
        elif stage == "compare":
            jobs.append(StageJob(stage, "compare", "compare", _stage_cfg(
                cfg, stage, output=str(w / "compare"))))
    return jobs


# ------------------------------------------------------------------------------------ markers

def _changed(conf: Any, default: Any) -> Any:
    """The part of `conf` that differs from `default` (nested dicts compared key by key)."""
    if not isinstance(conf, dict) or not isinstance(default, dict):
        return conf
    out = {}
    for k, v in conf.items():
        if k not in default:
            out[k] = v
        elif v != default[k]:
            out[k] = _changed(v, default[k])
    return out


def _hash(job: StageJob) -> str:
    """The stage's config as far as it departs from its verb's defaults: an option added with a
    default that keeps today's behaviour (the rule for new options) leaves the hash, and so the
    finished stages of a workdir, as they were."""
    conf = _changed(redacted(job.config), redacted(type(job.config)()))
    conf.pop("tracking", None)  # where a run is logged does not change its outputs
    return hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marker(cfg: PipelineConfig, job: StageJob) -> Path:
    return Path(cfg.workdir) / ".pipeline" / f"{job.label}.json"


def is_complete(cfg: PipelineConfig, job: StageJob) -> bool:
    m = _marker(cfg, job)
    if not m.is_file():
        return False
    try:
        return json.loads(m.read_text()).get("config_hash") == _hash(job)
    except ValueError:
        return False


#: how a verb starts afresh instead of continuing what its output already holds
FRESH_START = {"generate": {"overwrite": True}, "sft": {"resume": False}, "rl": {"resume": False}}


def _started(cfg: PipelineConfig, job: StageJob) -> Path:
    return Path(cfg.workdir) / ".pipeline" / f"{job.label}.started"


def _recorded_hash(cfg: PipelineConfig, job: StageJob) -> str | None:
    """Config hash of the stage's last run in this workdir (started or finished), if any."""
    if _started(cfg, job).is_file():
        return _started(cfg, job).read_text().strip()
    try:
        return json.loads(_marker(cfg, job).read_text()).get("config_hash")
    except (OSError, ValueError):
        return None


def _finished_output(job: StageJob) -> bool:
    """generate's output already holds the finished dataset of this very config (its markers
    were lost, or it was made outside the pipeline): nothing to redo."""
    if job.verb != "generate":
        return False
    return is_finished(job.config)


def _fresh_if_stale(cfg: PipelineConfig, job: StageJob, must: bool) -> StageJob:
    """The job to run. Its output may hold an earlier run: continue it (an unfinished dataset, a
    checkpoint) only when that run had this very config and its inputs have not been redone;
    otherwise start afresh — a changed config must neither fail on the old output nor resume a
    stale checkpoint."""
    recorded = _recorded_hash(cfg, job)
    if job.verb in FRESH_START and recorded is not None and (must or recorded != _hash(job)):
        return StageJob(job.stage, job.label, job.verb,
                        replace(job.config, **FRESH_START[job.verb]))
    return job


def _mark(cfg: PipelineConfig, job: StageJob, seconds: float) -> None:
    m = _marker(cfg, job)
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(json.dumps({"stage": job.stage, "label": job.label, "config_hash": _hash(job),
                             "seconds": round(seconds, 1),
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))


# ------------------------------------------------------------------------------------ running

def pipeline_id(cfg: PipelineConfig) -> str:
    """Stable across reruns of one workdir (tag `dutrain.pipeline` on every stage run)."""
    return hashlib.sha256(str(Path(cfg.workdir).resolve()).encode()).hexdigest()[:12]


def _compare_evals(job: StageJob, pid: str) -> StageJob:
    """compare selects this pipeline's eval runs, the newest of each eval stage (reruns log them
    again under the same names), unless its section selects runs itself."""
    if job.config.runs or job.config.filter:
        return job
    tags = list(job.config.tags or ["dutrain.stage=eval"]) + [f"dutrain.pipeline={pid}"]
    return StageJob(job.stage, job.label, job.verb,
                    replace(job.config, tags=tags, latest_per_name=True))


def run_pipeline(cfg: PipelineConfig, runner: Callable[[str, Any], Any] | None = None) -> dict:
    """Run the planned stages; returns {label: {"status", "seconds"}}. Raises PipelineError
    (a stage's user error) or StageFailed (a stage's non-zero exit code)."""
    jobs = plan(cfg)
    sources = preflight_pipeline(cfg)
    runner = runner or stage_runner(sources)
    forced = set(cfg.force)
    redo_from = min((PIPELINE_STAGES.index(s) for s in forced), default=len(PIPELINE_STAGES))
    results: dict[str, dict[str, Any]] = {}
    name = cfg.tracking.run_name or f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    with stage_run(cfg, "pipeline", run_name=name) as parent, ray_session(cfg.ray):
        if parent.active:
            os.environ[PARENT_ENV] = parent.run_id
        os.environ[PIPELINE_ENV] = pipeline_id(cfg)
        try:
            for job in jobs:
                if job.stage == "compare":
                    job = _compare_evals(job, pipeline_id(cfg))
                must = PIPELINE_STAGES.index(job.stage) >= redo_from
                if not must and (is_complete(cfg, job) or _finished_output(job)):
                    results[job.label] = {"status": "skipped (complete)", "seconds": 0.0}
                    print(f"[pipeline] {job.label}: complete, skipped", flush=True)
                    continue
                print(f"[pipeline] {job.label}: running `dutrain {job.verb}`", flush=True)
                started = _started(cfg, job)
                run_job = _fresh_if_stale(cfg, job, must)
                started.parent.mkdir(parents=True, exist_ok=True)
                started.write_text(_hash(job))
                t0 = time.monotonic()
                try:
                    code = runner(run_job.verb, run_job.config)
                except UserError as exc:
                    dt = time.monotonic() - t0
                    results[job.label] = {"status": "FAILED (exit 2)", "seconds": dt}
                    raise PipelineError(f"stage '{job.label}' (dutrain {job.verb}): {exc}; later "
                                        f"stages not run. Fix it and rerun: completed stages "
                                        f"are skipped.") from None
                dt = time.monotonic() - t0
                code = int(code or 0) if not isinstance(code, dict) else 0
                if code != 0:
                    results[job.label] = {"status": f"FAILED (exit {code})", "seconds": dt}
                    parent.log_metrics({f"pipeline/{job.label}_seconds": dt})
                    raise StageFailed(f"stage '{job.label}' (dutrain {job.verb}) failed with exit "
                                      f"code {code}; later stages not run. Fix it and rerun: "
                                      f"completed stages are skipped.", code)
                # later stages see new outputs
                redo_from = min(redo_from, PIPELINE_STAGES.index(job.stage) + 1)
                _mark(cfg, job, dt)
                results[job.label] = {"status": "done", "seconds": dt}
                parent.log_metrics({f"pipeline/{job.label}_seconds": dt})
        finally:
            os.environ.pop(PARENT_ENV, None)
            os.environ.pop(PIPELINE_ENV, None)
            parent.log_dict(results, "pipeline_results.json")
    return results


def _summary(cfg: PipelineConfig, results: dict[str, dict[str, Any]]) -> str:
    lines = ["", "stage                 status                 seconds"]
    for label, r in results.items():
        lines.append(f"{label:<21} {r['status']:<22} {r['seconds']:7.1f}")
    metrics_rows = []
    for label in sorted(p.name for p in (Path(cfg.workdir) / "eval").glob("*") if p.is_dir()):
        f = Path(cfg.workdir) / "eval" / label / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            for split in ("test", "ood"):
                if f"{split}/type_f1" in m:
                    metrics_rows.append(
                        f"{label:<10} {split:<5} "
                        f"{m.get(f'{split}/format_valid', float('nan')):>7.3f} "
                        f"{m.get(f'{split}/type_f1', float('nan')):>7.3f} "
                        f"{m.get(f'{split}/type_exact', float('nan')):>7.3f} "
                        f"{m.get(f'{split}/value_nmae', float('nan')):>7.3f}")
    if metrics_rows:
        lines += ["", "system     split  format type_f1  exact  v_nmae"] + metrics_rows
    restore = Path(cfg.workdir) / "restore" / "metrics.json"
    if restore.is_file():
        m = json.loads(restore.read_text())
        psnr = {k: v for k, v in m.items() if k.count("/") == 2 and "/psnr/" in k}  # not per type
        if psnr:
            lines += ["", "restoration PSNR (dB): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in psnr.items())]
        worse = {k: v for k, v in m.items() if k.split("/")[1:2] == ["worse_than_identity"]}
        if worse:  # restore.plan=controlled: share of images > 0.5 dB below doing nothing
            lines.append("worse than identity by > 0.5 dB: "
                         + ", ".join(f"{k} {v:.1%}" for k, v in sorted(worse.items())))
    uri = tracking_uri(cfg.tracking.uri)
    lines += ["", f"outputs under {cfg.workdir}/ (data, sft, offline, rl, eval, restore, "
                  f"compare)"]
    if uri.startswith("sqlite:///"):
        lines.append(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
                     f"--port 5000  → http://127.0.0.1:5000")
    else:
        lines.append(f"MLflow: {uri}")
    return "\n".join(lines)


def stage_runner(sources: list[Any] | None = None) -> Callable[[str, Any], Any]:
    """`runner(verb, config)`: the verb's own runner; generate's gets `sources`, the listing the
    preflight checked, so it does not list and hash every photo again."""
    def runner(verb: str, config: Any) -> Any:
        if verb == "generate" and sources is not None:
            return VERBS[verb].run_fn()(config, sources=sources)
        return VERBS[verb].run_fn()(config)
    return runner


def preflight_pipeline(cfg: PipelineConfig) -> list[Any] | None:
    """What can be checked before Ray starts: the workdir and storage root, the tracking server,
    generate's sources, sft's starting model, and the dataset when generate does not run.
    Returns generate's checked listing (None without a generate stage), for its stage."""
    preflight.output_location("workdir", cfg.workdir)
    if cfg.storage_root:
        preflight.output_location("storage_root", cfg.storage_root, cfg.generate.storage)
    preflight.tracking(cfg.tracking)
    sources = list_inputs(cfg.generate) if "generate" in cfg.stages else None
    if "sft" in cfg.stages:
        preflight.model("sft.model", cfg.sft.model, cfg.sft.storage)
    else:
        first = next((s for s in ("offline", "rl") if s in cfg.stages), None)
        if first and not preflight_exists(checkpoint_of(cfg, "sft")):
            raise PipelineError(f"stage '{first}' starts from the sft stage's model "
                                f"'{checkpoint_of(cfg, 'sft')}', which does not exist; add "
                                f"'sft' to 'stages' or run it first")
    evaluated = evaluated_stage(cfg)
    users = [s for s in ("eval", "restore") if s in cfg.stages]
    if users and evaluated not in cfg.stages:  # the model those stages use must exist already
        try:
            preflight.model(f"{users[0]}: the {evaluated} stage's model",
                            checkpoint_of(cfg, evaluated), cfg.eval.storage)
        except UserError as exc:
            raise PipelineError(f"{exc}; add '{evaluated}' to 'stages' or run it first"
                                ) from None
    if "generate" not in cfg.stages and any(s in cfg.stages for s in ("sft", "offline", "rl",
                                                                      "eval", "restore")):
        try:
            preflight.dataset("data", store(cfg, "data"), cfg.generate.storage)
        except UserError as exc:
            raise PipelineError(f"{exc} (the generate stage's output; add 'generate' to "
                                f"'stages' or run it first)") from None
    return sources


def preflight_exists(uri: str) -> bool:
    return "://" in uri or Path(uri).is_dir()


def run(cfg: PipelineConfig) -> int:
    """CLI runner: 0; a stage's user error raises PipelineError (exit 2); a stage that failed
    otherwise ends the pipeline with that stage's exit code."""
    t0 = time.monotonic()
    try:
        results = run_pipeline(cfg)
    except StageFailed as exc:
        print(f"dutrain pipeline: {exc}", file=sys.stderr)
        return exc.code
    print(_summary(cfg, results))
    print(f"pipeline wall time: {time.monotonic() - t0:.0f} s")
    return 0
