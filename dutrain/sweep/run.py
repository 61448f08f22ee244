"""`dutrain sweep`: the trials of a search space as Ray Tune trials, one MLflow parent run.

Before Ray starts: every trial's config is built and validated (`space.plan`), the output folder
and the tracking server are checked. Then one parent run (tag dutrain.stage=sweep) is opened —
the same one again when the output folder already holds this sweep (`sweep.json`) — and the
trials not yet finished go to Ray Tune, each running the base verb's runner in its own process
(`trial.run_trial`). A failed trial is a FAILED child run with its error and does not stop the
others. Rerunning the same command continues: finished (and early-stopped) trials are skipped,
failed and interrupted ones run again.

The results — a table sorted by the metric with the swept parameters, a bar chart per metric and
a chart of the metric against each swept parameter — go through `dutrain.tracking.compare` to
`output/sweep.{md,csv,png}` and `sweep_vs_params.png`, and are logged to the parent run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dutrain.config.secrets import redacted
from dutrain.config.sweep import SweepConfig
from dutrain.errors import EXIT_INTERRUPTED
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.tracking.compare import Comparison, choose_metrics, plot_against
from dutrain.tracking.mlflow_run import stage_run, tracking_uri

from .space import Trial, parse_space, plan
from .trial import DONE, TrialContext, read_record, record_failure, run_trial, write_record

STATE = "sweep.json"


def sweep_id(cfg: SweepConfig) -> str:
    """Stable across reruns of one output folder (tag `dutrain.sweep` on every run)."""
    return hashlib.sha256(str(Path(cfg.output).resolve()).encode()).hexdigest()[:12]


def config_hash(cfg: SweepConfig) -> str:
    conf = redacted(cfg)
    conf.get("tracking", {}).pop("run_name", None)
    conf.pop("stop_after", None)  # a limited run and its continuation are the same sweep
    return hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _settle_interrupted(client: Any, root: Path, trials: list[Trial]) -> None:
    """Trials an earlier, interrupted run left `running`: their runs end KILLED, and they run
    again."""
    for t in trials:
        rec = read_record(root, t.name)
        if rec.get("status") == "running":
            if rec.get("run_id"):
                try:
                    client.set_tag(rec["run_id"], "dutrain.trial_status", "interrupted")
                    client.set_terminated(rec["run_id"], status="KILLED")
                except Exception:  # noqa: BLE001 - a run of another store: nothing to end
                    pass
            write_record(root, t.name, status="interrupted")


def _asha(cfg: SweepConfig) -> Any:
    """Tune's ASHA scheduler, remembering which trials it stopped (`.stopped`, trial names): a
    trial Tune ended without an error is early-stopped only if ASHA said so, else interrupted."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        stopped: set[str] = set()

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped.add(trial.config.get("trial"))
            return decision

    sched = RecordingASHA(time_attr="training_iteration", max_t=cfg.early_stop.max_t,
                          grace_period=cfg.early_stop.grace_period,
                          reduction_factor=cfg.early_stop.reduction_factor)
    sched.stopped = set()
    return sched


def _limit(n: int) -> Any:
    """A Tune stopper that ends the experiment once `n` trials have finished (`.reached`)."""
    from ray.tune.stopper import Stopper

    class AfterFinished(Stopper):
        def __init__(self) -> None:
            self.finished: set[str] = set()

        def __call__(self, trial_id: str, result: dict) -> bool:
            if result.get("trial_finished"):
                self.finished.add(trial_id)
            return False

        def stop_all(self) -> bool:
            return len(self.finished) >= n

    return AfterFinished()


def _tune(cfg: SweepConfig, ctx: TrialContext, todo: list[Trial]) -> tuple[Any, set[str]]:
    """Run `todo` as Tune trials; (the ResultGrid, the names of trials ASHA stopped)."""
    from ray import tune

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    scheduler = _asha(cfg) if cfg.early_stop.enabled else None
    # Ray refuses a trial that reserves nothing at all: 0 CPUs means a sliver
    resources = {"cpu": cfg.cpus_per_trial or (0.001 if not cfg.gpus_per_trial else 0),
                 "gpu": cfg.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([t.name for t in todo])},
        tune_config=tune.TuneConfig(
            metric=cfg.metric if scheduler else None, mode=cfg.mode if scheduler else None,
            scheduler=scheduler, num_samples=1, max_concurrent_trials=cfg.max_concurrent,
            trial_name_creator=lambda t: t.config["trial"],
            trial_dirname_creator=lambda t: t.config["trial"]),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(Path(cfg.output).absolute() / "tune"),
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False), verbose=0,
            stop=_limit(cfg.stop_after) if cfg.stop_after else None))
    grid = tuner.fit()
    return grid, set(scheduler.stopped) if scheduler else set()


def _finish_records(client: Any, root: Path, todo: list[Trial], grid: Any,
                    stopped: set[str]) -> None:
    """After Tune, a trial still `running` was stopped by ASHA (`stopped`), lost with its
    process (an error), or interrupted (Ctrl-C ends Tune without an error): record which, and
    end its run (KILLED, or FAILED with the error). Interrupted trials run again on a rerun."""
    errors = {}
    for r in grid:
        name = (r.config or {}).get("trial")
        if name:
            errors[name] = r.error
    for t in todo:
        rec = read_record(root, t.name)
        if rec.get("status") != "running":
            continue
        err = errors.get(t.name)
        if err is not None:
            text = f"{type(err).__name__}: {err}"
            write_record(root, t.name, status="failed", error=text[:4000])
            if rec.get("run_id"):
                record_failure(client, rec["run_id"], text, text)
            continue
        status = "stopped" if t.name in stopped else "interrupted"
        write_record(root, t.name, status=status)
        if rec.get("run_id"):
            client.set_tag(rec["run_id"], "dutrain.trial_status",
                           "early_stopped" if status == "stopped" else "interrupted")
            client.set_terminated(rec["run_id"], status="KILLED")


def results(cfg: SweepConfig, client: Any, experiment_id: str, trials: list[Trial]
            ) -> Comparison:
    """The trials' runs (the newest run of each trial), best first by the sweep metric."""
    names = {t.name for t in trials}
    hits = client.search_runs([experiment_id], f"tags.`dutrain.sweep` = '{sweep_id(cfg)}' and "
                              f"tags.`dutrain.stage` != 'sweep'", max_results=1000,
                              order_by=["attributes.start_time ASC"])
    latest = {r.info.run_name: r for r in hits if r.info.run_name in names}  # newer win
    order = {t.name: i for i, t in enumerate(trials)}
    runs = sorted(latest.values(), key=lambda r: order[r.info.run_name])
    keys = [d.key for d in parse_space(cfg.space, cfg.verb)]
    params = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1] or keys
    metrics = choose_metrics([r for r in runs if r.data.metrics] or runs,
                             [cfg.metric] if cfg.metric else ())
    if cfg.metric:
        extra = [m for m in choose_metrics([r for r in runs if r.data.metrics] or runs)
                 if m != cfg.metric]
        first = [cfg.metric, *([cfg.reference_metric] if cfg.reference_metric else [])]
        metrics = [*first, *[m for m in extra if m not in first][:5]]
    comp = Comparison(runs, params, metrics, show_status=True)
    return comp.sorted_by(cfg.metric, cfg.mode) if cfg.metric else comp


def run_sweep(cfg: SweepConfig) -> tuple[Comparison, dict[str, Any]]:
    """Run (or continue) the sweep; returns the results and a summary (counts, paths)."""
    from mlflow import MlflowClient

    trials = plan(cfg)  # every trial's config validated before anything starts
    preflight.output_location("output", cfg.output)
    preflight.tracking(cfg.tracking, required=True)
    out = Path(cfg.output).absolute()
    root = out / "trials"
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(cfg.tracking.uri)
    client = MlflowClient(tracking_uri=uri)
    _settle_interrupted(client, root, trials)
    status = {t.name: read_record(root, t.name).get("status") for t in trials}
    todo = [t for t in trials if status[t.name] not in DONE
            and (cfg.retry_failed or status[t.name] != "failed")]
    skipped = len(trials) - len(todo)
    sid = sweep_id(cfg)
    name = cfg.tracking.run_name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.monotonic()
    state = _state(out)  # the same sweep again: its parent run continues; a changed one: a new
    again = state.get("parent_run_id") if state.get("config_hash") == config_hash(cfg) else None
    with stage_run(cfg, "sweep", run_name=name, run_id=again,
                   tags={"dutrain.sweep": sid}) as parent:
        (out / STATE).write_text(json.dumps({"parent_run_id": parent.run_id, "sweep_id": sid,
                                             "verb": cfg.verb, "config_hash": config_hash(cfg)},
                                            indent=2))
        exp_id = client.get_run(parent.run_id).info.experiment_id
        print(f"[sweep] {len(trials)} trials of `dutrain {cfg.verb}`: {len(todo)} to run, "
              f"{skipped} already done (output {out})", flush=True)
        if todo:
            ctx = TrialContext(cfg.verb, os.getcwd(), uri, exp_id, parent.run_id, sid,
                               str(root), cfg.metric, cfg.early_stop.enabled,
                               cfg.early_stop.poll_seconds, {t.name: t for t in todo})
            with ray_session(cfg.ray):
                grid, stopped = _tune(cfg, ctx, todo)
            _finish_records(client, root, todo, grid, stopped)
        comp = results(cfg, client, exp_id, trials)
        files = comp.write(out, "sweep", "bar", title=f"dutrain sweep ({cfg.verb})")
        if cfg.metric and comp.params:
            log_x = [d.key for d in parse_space(cfg.space, cfg.verb) if d.kind == "loguniform"]
            plot_against(comp, cfg.metric, comp.params, out / "sweep_vs_params.png", log_x,
                         title=f"dutrain sweep: {cfg.metric} ({cfg.mode}) against each "
                               f"swept parameter", reference=cfg.reference_metric)
            files.append(out / "sweep_vs_params.png")
        counts = {s: sum(1 for t in trials if read_record(root, t.name).get("status") == s)
                  for s in ("finished", "stopped", "failed", "interrupted", "running")}
        counts["unfinished"] = len(trials) - sum(counts[k] for k in ("finished", "stopped",
                                                                     "failed"))
        summary = {"trials": len(trials), "ran": len(todo), "skipped": skipped, **counts,
                   "seconds": round(time.monotonic() - t0, 1), "files": [str(f) for f in files],
                   "parent_run_id": parent.run_id}
        parent.log_metrics({"sweep/trials": len(trials), "sweep/finished": counts["finished"],
                            "sweep/failed": counts["failed"], "sweep/stopped": counts["stopped"]})
        best = comp.runs[0].data.metrics.get(cfg.metric) if cfg.metric and comp.runs else None
        if best is not None:
            parent.log_metrics({f"best/{cfg.metric}": best})
            parent.set_tags({"dutrain.best_trial": comp.runs[0].info.run_name})
        for f in files:
            parent.log_artifact(f)
        parent.log_dict(summary, "sweep_summary.json")
    return comp, summary


def run(cfg: SweepConfig) -> int:
    """CLI runner: 0 when every trial finished (or was stopped early), 1 when any failed, 130
    when the sweep was interrupted (a rerun continues)."""
    comp, summary = run_sweep(cfg)
    if summary["unfinished"] and cfg.stop_after:
        print(comp.text())
        print(f"[sweep] stopped after {cfg.stop_after} finished trial(s) as asked (stop_after); "
              f"{summary['unfinished']} trial(s) left: rerun without it to continue")
        return 0
    if summary["unfinished"]:
        print(comp.text())
        print(f"dutrain sweep: interrupted; {summary['unfinished']} trial(s) did not finish. "
              f"Finished trials are kept: rerun the same command to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(comp.text())
    print(f"[sweep] {summary['finished']} finished, {summary['stopped']} stopped early, "
          f"{summary['failed']} failed ({summary['ran']} run now, {summary['skipped']} kept from "
          f"before) in {summary['seconds']:.0f} s; table: {cfg.output}/sweep.md, charts: "
          f"{cfg.output}/sweep.png" + (f", {cfg.output}/sweep_vs_params.png" if cfg.metric
                                       else "") + f"; mlflow run: {summary['parent_run_id']}")
    if cfg.metric and comp.runs and all(cfg.metric not in r.data.metrics for r in comp.runs):
        logged = sorted({k for r in comp.runs for k in r.data.metrics})
        print(f"dutrain sweep: no trial logged the metric '{cfg.metric}', so the table is not "
              f"ranked; metrics the trials logged: {', '.join(logged[:20]) or 'none'}",
              file=sys.stderr)
    if summary["failed"]:
        failed = [r.info.run_name for r in comp.runs if r.info.status == "FAILED"]
        print(f"dutrain sweep: {summary['failed']} trial(s) failed ({', '.join(failed)}; their "
              f"errors: tag dutrain.error of each run). Rerun the same command to retry them; "
              f"finished trials are kept.", file=sys.stderr)
        return 1
    return 0
