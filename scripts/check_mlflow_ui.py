"""Check in a real browser what a new user sees of a dutrain experiment in the MLflow UI.

    .venv/bin/python scripts/check_mlflow_ui.py [--out DIR] [--chromium PATH]

Starts a real ``mlflow server`` (SQLite, 127.0.0.1, a free port) in a temp dir, makes one eval
run through dutrain's own ``stage_run`` (which tags the experiment as a model-training one and
logs the dataset card as an MLflow dataset input, and prints the run's and experiment's links),
then loads the printed experiment link in headless Chromium with a fresh profile (a new user:
nothing in local storage) and checks the rendered DOM:

- ``runs_view``: the page is the runs table (the run's name and the table's columns are there),
  not the GenAI overview or traces view;
- ``dataset_in_runs_table``: the dataset's name and digest (the card's fingerprint) are in it.

The printed run link is loaded as well (``dataset_on_run_page``). The view a bare
``#/experiments/ID`` link lands on is reported (``bare_experiment_link_view``), not checked: the
MLflow 3.17 UI takes it from its GenAI / Model training switch (GenAI for a new user), not from
the experiment's tag, so dutrain's links carry ``?workflowType=machine_learning``.
Prints a JSON summary; exits 1
when a check fails, 2 when it could not run (no Chromium, the server did not start). The server
is stopped whatever happens. Screenshots go to --out (default: the temp dir, then removed).
docs/design.md §8 "Checked in a browser" has the result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EXPERIMENT = "dutrain-ui-check"
RUN_NAME = "ui-check-eval"
DATASET = "ui-check-data"
FINGERPRINT = "5eed0fd1ce0ffee5"
#: what the GenAI landing (its overview or traces table) shows and the runs view does not
GENAI_MARKERS = ("Token Usage", "Tool calls", "Detect Issues", "No traces")
#: column headers of the runs table
RUNS_MARKERS = ("Run Name", "Dataset")


class CheckError(RuntimeError):
    """The check could not run (no browser, no server); not a failed check."""


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


def _mlflow_version() -> str:
    from importlib.metadata import version
    return version("mlflow")


def _chromium_version(chromium: str) -> str:
    out = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


#: how long the server may take to answer: its uvicorn process imports the whole MLflow app,
#: measured at 100 s with the 2 cores loaded 15-fold (and over 180 s at 20-fold)
SERVER_START_S = 300


def memory_tmp() -> str | None:
    """/dev/shm when it is there (else the default temp dir): the server creates its SQLite
    store with one fsync per migration, which on a disk busy with other jobs took over 3 min."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = open(workdir / "server.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [*_mlflow_cmd(), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--default-artifact-root", str(workdir / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
        # no job runner: seven Huey consumer processes for GenAI jobs that the UI check never uses
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + SERVER_START_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CheckError(f"mlflow server exited with {proc.returncode}: "
                             f"{(workdir / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise CheckError(f"mlflow server did not answer /health within {SERVER_START_S} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server's process group (uvicorn's worker with it)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(15)


def make_runs(workdir: Path, uri: str) -> dict[str, str]:
    """One eval run as a stage makes it (dutrain's stage_run), reading a dataset with a card;
    the ids, the experiment's kind tag and the links the stage printed."""
    from dutrain.config import load_config
    from dutrain.config.eval import EvalConfig
    from dutrain.tracking import stage_run
    from dutrain.tracking.mlflow_run import PARENT_ENV, PIPELINE_ENV, RUN_ENV

    data = workdir / "data" / DATASET
    data.mkdir(parents=True)
    (data / "dataset_card.json").write_text(json.dumps({
        "format": "dutrain-dataset-card/1", "fingerprint": FINGERPRINT,
        "columns": ["sample_id", "split", "degradations"],
        "counts": {"rows": 40, "per_split": {"test": 40}}}))
    saved = {k: os.environ.pop(k) for k in (PARENT_ENV, PIPELINE_ENV, RUN_ENV)
             if k in os.environ}
    try:
        cfg = load_config(EvalConfig, verb="eval", overrides=[
            f"dataset={data}", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"])
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            with stage_run(cfg, "eval", run_name=RUN_NAME) as run:
                run.log_metrics({"test/type_f1": 0.5, "test/value_nmae": 0.25})
    finally:
        os.environ.update(saved)
    from mlflow import MlflowClient
    exp = MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    links = dict(re.findall(r"View (run|experiment)\b.* at: (\S+)", printed.getvalue()))
    if set(links) != {"run", "experiment"}:
        raise CheckError(f"the stage printed no MLflow links: {printed.getvalue()!r}")
    return {"experiment_id": exp.experiment_id, "run_id": run.run_id,
            "experiment_kind_tag": exp.tags.get("mlflow.experimentKind", ""),
            "printed_experiment_url": links["experiment"], "printed_run_url": links["run"]}


def render(chromium: str, url: str, workdir: Path, screenshot: Path | None,
           budget_ms: int = 15000) -> str:
    """The DOM of `url` after `budget_ms` of virtual time, as a new user's browser renders it
    (a fresh profile each time); a screenshot of the same page when `screenshot` is given."""
    base = [chromium, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-sync",
            "--disable-background-networking", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}"]

    def run(extra: list[str]) -> subprocess.CompletedProcess:
        profile = tempfile.mkdtemp(prefix="profile-", dir=workdir)
        try:
            return subprocess.run([*base, f"--user-data-dir={profile}", *extra, url],
                                  capture_output=True, text=True, timeout=240)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    dom = run(["--dump-dom"])
    if dom.returncode != 0 or not dom.stdout.strip():
        raise CheckError(f"chromium --dump-dom failed ({dom.returncode}): {dom.stderr[-2000:]}")
    if screenshot is not None:
        shot = run([f"--screenshot={screenshot}"])
        if shot.returncode != 0 or not screenshot.exists():
            raise CheckError(f"chromium --screenshot failed ({shot.returncode}): "
                             f"{shot.stderr[-2000:]}")
    return dom.stdout


def visible_text(dom: str) -> str:
    """The DOM's text without scripts, styles and tags, whitespace collapsed."""
    dom = re.sub(r"(?is)<(script|style|noscript)\b.*?</\1>", " ", dom)
    return re.sub(r"\s+", " ", re.sub(r"(?s)<[^>]+>", " ", dom)).strip()


def view(text: str) -> str:
    """Which view a page's text is: 'runs' (the runs table with dutrain's run), 'genai' (the
    GenAI overview or traces), or 'other'."""
    if RUN_NAME in text and all(m in text for m in RUNS_MARKERS) \
            and not any(m in text for m in GENAI_MARKERS):
        return "runs"
    return "genai" if any(m in text for m in GENAI_MARKERS) else "other"


def run_check(out: Path | None = None, chromium: str | None = None) -> dict[str, Any]:
    """Run the whole check; returns the summary (``ok``: every check passed).
    Raises CheckError when it cannot run."""
    browser = find_chromium(chromium)
    if browser is None:
        raise CheckError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})")
    workdir = Path(tempfile.mkdtemp(prefix="dutrain-mlflow-ui-", dir=memory_tmp()))
    shots = Path(out) if out else workdir
    shots.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"chromium": _chromium_version(browser),
                               "mlflow": _mlflow_version(), "checks": {}, "screenshots": {}}
    proc = None
    try:
        proc, uri = start_server(workdir)
        summary["server"] = uri
        ids = make_runs(workdir, uri)
        summary.update(ids)
        # the links the stage printed, and the bare experiment link (MLflow's own form, what
        # the experiments list leads to): its view is reported, not checked (see module doc)
        pages = {"experiment": ids["printed_experiment_url"], "run": ids["printed_run_url"],
                 "experiment_bare": f"{uri}/#/experiments/{ids['experiment_id']}"}
        texts = {}
        for page, url in pages.items():
            shot = shots / f"mlflow-ui-{page}.png"
            texts[page] = visible_text(render(browser, url, workdir, shot))
            (shots / f"mlflow-ui-{page}.txt").write_text(texts[page])
            summary["screenshots"][page] = str(shot)
        summary["urls"] = pages
        exp_text, run_text = texts["experiment"], texts["run"]
        checks = summary["checks"]
        checks["runs_view"] = view(exp_text) == "runs"
        checks["dataset_in_runs_table"] = DATASET in exp_text and FINGERPRINT[:8] in exp_text
        checks["dataset_on_run_page"] = DATASET in run_text and FINGERPRINT[:8] in run_text
        summary["bare_experiment_link_view"] = view(texts["experiment_bare"])
        summary["ok"] = all(checks.values())
        return summary
    finally:
        if proc is not None:
            stop_server(proc)
        summary["server_stopped"] = proc is None or proc.poll() is not None
        if out is None:
            shutil.rmtree(workdir, ignore_errors=True)
            summary["screenshots"] = {k: f"(removed with {workdir})"
                                      for k in summary["screenshots"]}
        else:
            if (workdir / "server.log").exists():
                shutil.copy(workdir / "server.log", shots / "mlflow-server.log")
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="keep the screenshots and page texts here")
    ap.add_argument("--chromium", help="the Chromium binary (default: the first on PATH)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    try:
        summary = run_check(args.out, args.chromium)
    except CheckError as e:
        print(json.dumps({"ok": False, "error": str(e)}, indent=2))
        return 2
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
