"""MLflow runs for dutrain stages (docs/design.md §8). Side effects on rank 0 only.

    with stage_run(cfg, "generate") as run:
        run.log_metrics({"rows_per_s": 31.2})
        run.log_artifact("out/preview.png")

Tracking URI: ``cfg.tracking.uri`` → ``$MLFLOW_TRACKING_URI`` → ``sqlite:///<cwd>/mlflow.db``.
A ``pipeline`` run exports ``DUTRAIN_PARENT_RUN_ID`` so each stage run becomes its child.
Params are the redacted, flattened config; text artifacts are scrubbed of secret values.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from dutrain.config.secrets import flatten, redacted, scrub

PARENT_ENV = "DUTRAIN_PARENT_RUN_ID"
#: set by `dutrain pipeline`: a stable id of its workdir, tagged on every stage run so a rerun
#: (a new parent run) still finds the runs of stages it skipped
PIPELINE_ENV = "DUTRAIN_PIPELINE_ID"
#: set by a `dutrain sweep` trial: the id of the child run it made for itself; the next stage run
#: in that process logs into it (and clears the variable) instead of making a run of its own
RUN_ENV = "DUTRAIN_RUN_ID"
_MAX_PARAM = 6000  # MLflow's param value limit
#: experiment tag in which MLflow 3 keeps an experiment's kind; dutrain's experiments train
#: models (not GenAI apps)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: ...but the MLflow 3.17 UI takes an experiment's view from its sidebar switch "GenAI / Model
#: training" (kept in the browser, GenAI for a new user), not from that tag; this URL query
#: overrides the switch, so the links dutrain prints open on the runs table
#: (scripts/check_mlflow_ui.py checks it in a browser)
UI_QUERY = "workflowType=machine_learning"
#: config key holding the dataset a stage reads, and the MLflow dataset context it is logged with
DATASET_KEYS = (("dataset", {"eval": "evaluation"}), ("input", {"restore": "evaluation"}))


def tracking_uri(uri: str | None = None) -> str:
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_rank_zero() -> bool:
    """True outside distributed training and on global rank 0 inside it."""
    for var in ("RANK", "DUTRAIN_RANK"):
        if os.environ.get(var) not in (None, "", "0"):
            return False
    return True


class Tracker:
    """A handle on one MLflow run; every method is a no-op when tracking is off."""

    def __init__(self, client: Any = None, run_id: str | None = None,
                 artifact_uri: str | None = None):
        self._client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri

    @property
    def active(self) -> bool:
        return self._client is not None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric  # lazy: mlflow only for a tracked run (slow import)
        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
              if v is not None and _finite(v)]
        for i in range(0, len(ms), 500):
            self._client.log_batch(self.run_id, metrics=ms[i:i + 500])

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param  # lazy: mlflow only for a tracked run (slow import)
        ps = [Param(k, scrub(_param_str(v))[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(ps), 100):
            self._client.log_batch(self.run_id, params=ps[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, scrub(str(v)))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            if Path(path).is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        """Write `text` (scrubbed) as artifact `name` (a relative path inside the run)."""
        if not self.active:
            return
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / Path(name).name
            p.write_text(scrub(text))
            parent = str(Path(name).parent) if str(Path(name).parent) != "." else None
            self._client.log_artifact(self.run_id, str(p), parent)

    def log_dict(self, data: Any, name: str) -> None:
        text = yaml.safe_dump(data, sort_keys=False) if name.endswith((".yaml", ".yml")) \
            else json.dumps(data, indent=2, default=str)
        self.log_text(text, name)


def _finite(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))


def _param_str(v: Any) -> str:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    return str(v)


@contextlib.contextmanager
def stage_run(cfg: Any, stage: str, *, run_name: str | None = None,
              params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
              rank_zero: bool | None = None, run_id: str | None = None) -> Iterator[Tracker]:
    """An MLflow run for one stage with the redacted config as params and tag dutrain.stage.

    Yields a no-op Tracker off rank 0 or when ``cfg.tracking.enabled`` is false. The run ends
    FAILED if the body raises (the exception propagates). `run_id` (else ``$DUTRAIN_RUN_ID``,
    which is then cleared): an existing run to log into and end, instead of a new one.
    """
    tcfg = getattr(cfg, "tracking", None)
    enabled = tcfg is None or tcfg.enabled
    if rank_zero is None:
        rank_zero = is_rank_zero()
    if not (enabled and rank_zero):
        yield Tracker()
        return
    # lazy: mlflow is slow to import; only a tracked run (enabled, rank zero) needs it
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    uri = tracking_uri(getattr(tcfg, "uri", None))
    client = MlflowClient(tracking_uri=uri)
    exp_name = getattr(tcfg, "experiment", "dutrain")
    exp = client.get_experiment_by_name(exp_name)
    exp_id = exp.experiment_id if exp else _create_experiment(client, exp_name)
    if exp is not None and EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    name = (run_name or getattr(tcfg, "run_name", None)
            or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}")
    all_tags = {"dutrain.stage": stage, MLFLOW_RUN_NAME: name}
    parent = os.environ.get(PARENT_ENV)
    if parent and stage != "pipeline":
        all_tags[MLFLOW_PARENT_RUN_ID] = parent
    if os.environ.get(PIPELINE_ENV):
        all_tags["dutrain.pipeline"] = os.environ[PIPELINE_ENV]
    all_tags.update(tags or {})
    adopt = run_id or os.environ.pop(RUN_ENV, None)
    run = _adopt(client, adopt, all_tags) if adopt else None
    if run is None:
        run = client.create_run(exp_id, tags={k: scrub(str(v)) for k, v in all_tags.items()},
                                run_name=name)
    tracker = Tracker(client, run.info.run_id, run.info.artifact_uri)
    status = "FAILED"
    try:
        conf = redacted(cfg) if cfg is not None else {}
        logged = run.data.params if adopt else {}  # an adopted run keeps the params it has
        tracker.log_params({k: v for k, v in {**flatten(conf), **(params or {})}.items()
                            if k not in logged})
        tracker.log_dict(conf, "config.yaml")
        log_dataset_input(client, run.info.run_id, cfg, stage)
        yield tracker
        status = "FINISHED"
    finally:
        with _mlflow_links_quiet():
            client.set_terminated(run.info.run_id, status=status)
        _print_links(uri, exp_id, run.info.run_id, getattr(run.info, "run_name", None) or name)


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment (or of one of its runs) that opens on the runs view
    (UI_QUERY); None for a tracking URI without a UI (sqlite:, a path)."""
    if not uri.startswith(("http://", "https://")):
        return None
    page = f"{uri.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{page}/runs/{run_id}?{UI_QUERY}" if run_id else f"{page}?{UI_QUERY}"


@contextlib.contextmanager
def _mlflow_links_quiet() -> Iterator[None]:
    """MLflow's own 'View run/experiment at' lines (their links open the GenAI view) off."""
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    old = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _print_links(uri: str, experiment_id: str, run_id: str, name: str) -> None:
    run_url = ui_url(uri, experiment_id, run_id)
    if run_url:
        print(f"View run {name} at: {run_url}\nView experiment at: "
              f"{ui_url(uri, experiment_id)}", flush=True)


def _adopt(client: Any, run_id: str, tags: dict[str, Any]) -> Any:
    """The existing run `run_id`, running again, with `tags` set (its name and parent kept);
    None when the store does not hold it."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - another store, or deleted: start a new run instead
        return None
    client.update_run(run_id, status="RUNNING")
    for k, v in tags.items():
        if k not in (MLFLOW_RUN_NAME, MLFLOW_PARENT_RUN_ID):
            client.set_tag(run_id, k, scrub(str(v)))
    return run


def dataset_input(root: str, storage: Any = None, context: str = "training") -> Any:
    """An MLflow DatasetInput for the dutrain dataset at `root` (name: its folder, digest: its
    card's fingerprint, source: its URI, profile: its row counts); None without a readable
    card (an unfinished or foreign dataset)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from dutrain.io.dataset import CARD_FILE
    from dutrain.io.storage import absolute, filesystem, is_remote
    try:
        fs, path = filesystem(root, storage)
        with fs.open(f"{path.rstrip('/')}/{CARD_FILE}", "r") as fh:
            card = json.load(fh)
        digest = str(card["fingerprint"])[:36]
    except Exception:  # noqa: BLE001 - no card, no dataset input; the run goes on
        return None
    uri = root if is_remote(root) else absolute(root)
    counts = card.get("counts", {})
    ds = Dataset(name=Path(root.rstrip("/")).name or root, digest=digest,
                 source_type="s3" if root.startswith("s3://") else "local",
                 source=json.dumps({"uri": uri}),
                 schema=json.dumps({"columns": card.get("columns")}, default=str)[:100000],
                 profile=json.dumps({"rows": counts.get("rows"),
                                     "per_split": counts.get("per_split")}))
    return DatasetInput(ds, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_dataset_input(client: Any, run_id: str, cfg: Any, stage: str) -> None:
    """Log the dataset `cfg` reads (key `dataset`, or restore's `input`) as the run's MLflow
    dataset input, so the runs table's Dataset column and lineage show it. Best effort."""
    for key, contexts in DATASET_KEYS:
        root = getattr(cfg, key, None)
        if isinstance(root, str) and root:
            inp = dataset_input(root, getattr(cfg, "storage", None), contexts.get(stage,
                                                                                  "training"))
            if inp is not None:
                try:
                    client.log_inputs(run_id, datasets=[inp])
                except Exception:  # noqa: BLE001 - lineage is a nicety, never a failure
                    pass
            return


def _create_experiment(client: Any, name: str) -> str:
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id
