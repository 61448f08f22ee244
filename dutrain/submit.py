"""`dutrain submit`: run any verb as a Ray job on a cluster (Ray's JobSubmissionClient).

    dutrain submit VERB [--address URL] [--follow] [--config FILE] [flags] [key=value ...]
    dutrain submit --status ID | --logs ID [--follow] | --stop ID | --list

The verb's config is validated here first, so a bad key fails before anything is uploaded; a
tiny probe job then checks that the cluster finds `dutrain` on its PATH (`--no-check` skips it).
This module parses its own `--flags` (`FLAG_TABLE`, one record per flag). The
job runs `dutrain VERB --config _submit/<file> key=value ...` in a working directory shipped
through `runtime_env` (the project checkout minus environments and outputs, plus the config
file); this dutrain package is shipped too (`py_modules`) unless the working directory holds it.

Authentication: Ray's token auth. The token comes from the environment the way Ray's own
clients find it ($RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token;
none when RAY_AUTH_MODE=disabled) and travels only in the request's Authorization header.
Secrets are never put into the job: the entrypoint, the shipped config and the job's env_vars
are checked, and the cluster brings its own credentials (Kubernetes secrets, instance roles).

Exit codes: 0 job SUCCEEDED (or request done), 1 job FAILED, 2 bad usage or config, 3 job
STOPPED, 4 cluster unreachable, authentication refused or unknown job.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, TextIO

import yaml

import dutrain
from dutrain.config import VERBS, ConfigError, help_rows, load_config
from dutrain.config.secrets import SECRET_ENV_VARS, redacted, scrub
from dutrain.config.submit import DEFAULT_EXCLUDES, SubmitConfig
from dutrain.errors import EXIT_CLUSTER, EXIT_FAILED, EXIT_OK, EXIT_STOPPED, UserError

STATUS_EXIT = {"SUCCEEDED": EXIT_OK, "FAILED": EXIT_FAILED, "STOPPED": EXIT_STOPPED}
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
CONFIG_DIR = "_submit"  # where the verb's config file lands inside the shipped working dir
#: verbs whose driver reserves a CPU by default (it runs the Ray Data pipeline's coordinator)
DRIVER_CPU_VERBS = ("generate", "pipeline")



@dataclass(frozen=True)
class Flag:
    """One of submit's own command-line flags (the one table parse_argv, the flag names in error
    messages and --help are made from)."""

    name: str  # "--address"
    key: str | None = None  # the SubmitConfig key it sets (None: --config or an action)
    metavar: str | None = None  # the value it takes (None: a switch)
    repeatable: bool = False  # each use appends to a list
    short: str | None = None  # "-f"
    action: str | None = None  # status | logs | stop | list | help: what the request does
    switch_value: bool = True  # what a switch sets its key to
    number: bool = False  # the value is read as YAML (numbers stay numbers)


FLAG_TABLE: tuple[Flag, ...] = (
    Flag("--address", "address", "URL"),
    Flag("--follow", "follow", short="-f"),
    Flag("--num-cpus", "entrypoint_num_cpus", "N", number=True),
    Flag("--num-gpus", "entrypoint_num_gpus", "N", number=True),
    Flag("--env", "env", "NAME[=VALUE]", repeatable=True),
    Flag("--working-dir", "working_dir", "DIR"),
    Flag("--exclude", "excludes", "GLOB", repeatable=True),
    Flag("--no-package", "ship_package", switch_value=False),
    Flag("--pip", "pip", "SPEC", repeatable=True),
    Flag("--no-check", "check_entrypoint", switch_value=False),
    Flag("--submission-id", "submission_id", "ID"),
    Flag("--wait", "wait_s", "SECONDS", number=True),
    Flag("--config", metavar="FILE", short="-c"),
    Flag("--status", metavar="ID", action="status"),
    Flag("--logs", metavar="ID", action="logs"),
    Flag("--stop", metavar="ID", action="stop"),
    Flag("--list", action="list"),
    Flag("--help", action="help", short="-h"),
)
#: every spelling (long and short) → its Flag
FLAGS: dict[str, Flag] = {**{f.name: f for f in FLAG_TABLE},
                          **{f.short: f for f in FLAG_TABLE if f.short}}


@dataclass
class Request:
    """`dutrain submit` argv, parsed: what to do, the target verb and the submit settings."""
    action: str = "submit"  # submit | status | logs | stop | list | help
    job_id: str | None = None
    verb: str | None = None
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def parse_argv(argv: list[str]) -> Request:
    """Split submit's own flags from the target verb and its key=value overrides."""
    req = Request()
    it = iter(argv)
    for arg in it:
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        flag = FLAGS.get(name)
        if flag is None:
            if arg.startswith("-"):
                raise ConfigError(f"unknown option '{arg}'; options: "
                                  f"{', '.join(f.name for f in FLAG_TABLE)}")
            if req.verb is None:
                req.verb = arg
            else:
                req.overrides.append(arg)
            continue
        value = None
        if flag.metavar is not None:
            value = inline if eq else next(it, None)
            if value is None:
                raise ConfigError(f"{flag.name} needs a value ({flag.metavar})")
        elif eq:
            raise ConfigError(f"{flag.name} takes no value, got '{arg}'")
        if flag.action is not None:
            req.action, req.job_id = flag.action, value
        elif flag.key is None:  # --config
            req.config_file = value
        elif value is None:
            req.settings[flag.key] = flag.switch_value
        elif flag.repeatable:
            req.settings.setdefault(flag.key, []).append(value)
        else:
            req.settings[flag.key] = _scalar(value) if flag.number else value
    if "excludes" in req.settings:  # --exclude adds to the defaults
        req.settings["excludes"] = [*DEFAULT_EXCLUDES, *req.settings["excludes"]]
    if req.action == "help":
        return req
    if req.action == "submit" and req.verb is None:
        raise ConfigError("missing VERB: dutrain submit VERB [flags] [key=value ...] "
                          "(or --status/--logs/--stop ID, --list)")
    if req.action != "submit" and (req.verb or req.overrides):
        raise ConfigError(f"--{req.action} takes no verb or key=value arguments, "
                          f"got {' '.join([req.verb or '', *req.overrides]).strip()!r}")
    return req


def _scalar(raw: str) -> Any:
    # numbers as numbers (config validation then checks bounds); anything else stays text
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


# ----------------------------------------------------------------------------- cluster access

def resolve_address(address: str | None, environ: Mapping[str, str]) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else the local default."""
    return (address or environ.get("RAY_API_SERVER_ADDRESS") or environ.get("RAY_ADDRESS")
            or DEFAULT_ADDRESS)


def auth_token(environ: Mapping[str, str], home: Path | None = None) -> str | None:
    """The Ray auth token, looked up in the order Ray's clients use; None when auth is off."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    path_var = environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(path_var) if path_var else (home or Path.home()) / ".ray" / "auth_token"
    if path.is_file():
        return path.read_text().strip() or None
    if path_var:
        raise ConfigError(f"RAY_AUTH_TOKEN_PATH names '{path}', which is not a file")
    if environ.get("RAY_AUTH_MODE", "").lower() == "token":
        raise ConfigError("RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN, "
                          "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
    return None


@contextlib.contextmanager
def _address_env_cleared() -> Iterator[None]:
    # JobSubmissionClient lets these variables override its address argument; ours resolved them
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
             if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> Any:
    """A JobSubmissionClient for the cluster, authenticated from the environment."""
    # lazy: `dutrain submit --help` loads this module, and ray is slow to import
    from ray.job_submission import JobSubmissionClient
    url = resolve_address(address, os.environ)
    token = auth_token(os.environ)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with _address_env_cleared():
        return JobSubmissionClient(url, headers=headers)


# ------------------------------------------------------------------------------- the job spec

def entrypoint_resources(verb: str, cfg: SubmitConfig) -> dict[str, float]:
    """entrypoint_num_cpus/gpus for submit_job: what the config says, else per-verb defaults.

    The driver of sft/rl reserves no GPU by default: Ray Train and the RL worker groups reserve
    their own, and a GPU held by the driver would leave an N-GPU node one short of N workers.
    """
    cpus = cfg.entrypoint_num_cpus
    if cpus is None:
        cpus = 1 if verb in DRIVER_CPU_VERBS else 0
    out = {"entrypoint_num_cpus": float(cpus), "entrypoint_num_gpus":
           float(cfg.entrypoint_num_gpus or 0)}
    return {k: v for k, v in out.items() if v}


def is_secret(name: str, value: str) -> bool:
    """Whether a variable is a secret by its name or holds a known secret value."""
    return name in SECRET_ENV_VARS or redacted({name: value})[name] != value


def job_env(items: list[str] | tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """env_vars of the job from `--env NAME[=VALUE]` items; secrets are refused."""
    out = {"PYTHONUNBUFFERED": "1"}  # logs stream line by line
    for item in items:
        name, sep, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"bad --env '{item}': expected NAME or NAME=VALUE")
        if not sep:
            if name not in environ:
                raise ConfigError(f"--env {name}: the variable is not set here")
            value = environ[name]
        if is_secret(name, value):
            raise ConfigError(f"--env {name}: refusing to put a secret into the job's "
                              f"runtime_env (it is stored with the job and shown to every "
                              f"dashboard user); give the cluster its secrets through its own "
                              f"environment (Kubernetes secret, instance role)")
        out[name] = value
    return out


def default_working_dir() -> Path | None:
    """The dutrain checkout this package was loaded from, if it is one."""
    root = Path(dutrain.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"dutrain"', pyproject.read_text()):
        return root
    return None


def _excluded(rel: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatch(part, p) for part in Path(rel).parts for p in patterns)


def _list_files(src: Path, excludes: tuple[str, ...] | list[str]) -> list[str]:
    """Relative paths to ship: git's view (tracked + untracked, not ignored) when `src` is a
    checkout, else a walk; both minus `excludes`."""
    try:
        out = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True, timeout=30)
        rels = [r for r in out.stdout.decode().split("\0") if r]
    except (OSError, subprocess.SubprocessError):
        rels = []
        for dirpath, dirnames, filenames in os.walk(src):
            base = Path(dirpath).relative_to(src)
            dirnames[:] = [d for d in dirnames if not _excluded(d, excludes)]
            rels += [str(base / f) for f in filenames]
    return sorted(r for r in rels if not _excluded(r, excludes) and (src / r).is_file())


def stage_working_dir(src: Path | None, config_file: Path | None, dest: Path,
                      excludes: tuple[str, ...] | list[str]) -> tuple[int, int, str | None]:
    """Copy the files to ship into `dest`; returns (files, bytes, config path inside dest)."""
    n = size = 0
    for rel in _list_files(src, excludes) if src else []:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
        n, size = n + 1, size + target.stat().st_size
    shipped = None
    if config_file is not None:
        shipped = f"{CONFIG_DIR}/{config_file.name}"
        (dest / CONFIG_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy2(config_file, dest / shipped)
        n, size = n + 1, size + config_file.stat().st_size
    return n, size, shipped


def entrypoint(verb: str, shipped_config: str | None, overrides: list[str]) -> str:
    args = ["dutrain", verb] + (["--config", shipped_config] if shipped_config else []) + overrides
    return shlex.join(args)


def job_overrides(verb_cfg: Any, overrides: list[str]) -> tuple[list[str], list[str]]:
    """The verb's overrides for the cluster, and notes for the user.

    A submitted job joins the cluster it runs on, so `ray.address` null/'local' becomes 'auto'.
    """
    notes = []
    ray_cfg = getattr(verb_cfg, "ray", None)
    if ray_cfg is not None and getattr(ray_cfg, "address", None) in (None, "local"):
        overrides = [*overrides, "ray.address=auto"]
    for key, value in _local_relative_paths(verb_cfg):
        notes.append(f"'{key}' is the relative path {value!r}: on the cluster it lands in the "
                     f"job's temporary working directory; use s3://... or a shared absolute path")
    tracking = getattr(verb_cfg, "tracking", None)
    if tracking is not None and tracking.enabled and not tracking.uri:
        notes.append("tracking.uri is not set: the job logs to the cluster's "
                     "$MLFLOW_TRACKING_URI, else to a SQLite file in its temporary working dir")
    return overrides, notes


_OUTPUT_KEY = re.compile(r"(^|_)(output|output_dir|storage_path|out_dir)$")


def _local_relative_paths(cfg: Any, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out += _local_relative_paths(v, f"{prefix}{f.name}.")
        elif (isinstance(v, str) and v and _OUTPUT_KEY.search(f.name) and "://" not in v
              and not os.path.isabs(v)):
            out.append((f"{prefix}{f.name}", v))
    return out


def _check_no_secret(what: str, text: str) -> None:
    if scrub(text) != text:
        raise ConfigError(f"{what} holds a secret value (a password in a URL or the value of a "
                          f"secret variable); the cluster must get it from its own environment")


# ---------------------------------------------------------------------------------- actions

def submit(req: Request, cfg: SubmitConfig, err: TextIO) -> tuple[Any, str]:
    """Validate the verb's config, ship the working dir and submit; returns (client, id)."""
    verb = req.verb
    if verb not in VERBS or verb == "submit":
        allowed = ", ".join(v for v in VERBS if v != "submit")
        raise ConfigError(f"cannot submit '{verb}'; verbs: {allowed}")
    config_file = Path(req.config_file) if req.config_file else None
    verb_cfg = load_config(VERBS[verb].config_class(), config_file, req.overrides, verb=verb)
    overrides, notes = job_overrides(verb_cfg, req.overrides)
    load_config(VERBS[verb].config_class(), config_file, overrides, verb=verb)
    env_vars = job_env(cfg.env, os.environ)
    src = Path(cfg.working_dir).resolve() if cfg.working_dir else default_working_dir()
    if src is not None and not src.is_dir():
        raise ConfigError(f"bad value for 'working_dir': '{src}' is not a directory")
    if config_file is not None:
        _check_no_secret(f"config file '{config_file}'", config_file.read_text())

    client = connect(cfg.address)
    if cfg.check_entrypoint and not cfg.pip:
        check_entrypoint(client, resolve_address(cfg.address, os.environ), err)
    with tempfile.TemporaryDirectory(prefix="dutrain-submit-") as tmp:
        n_files, n_bytes, shipped = stage_working_dir(src, config_file, Path(tmp), cfg.excludes)
        command = entrypoint(verb, shipped, overrides)
        _check_no_secret("the job's command line", command)
        runtime_env: dict[str, Any] = {"working_dir": tmp, "env_vars": env_vars,
                                       "excludes": list(cfg.excludes)}
        if cfg.ship_package and not (Path(tmp) / "dutrain" / "__init__.py").is_file():
            runtime_env["py_modules"] = [str(Path(dutrain.__file__).resolve().parent)]
        if cfg.pip:
            runtime_env["pip"] = list(cfg.pip)
        resources = entrypoint_resources(verb, cfg)
        for note in notes:
            print(f"dutrain submit: note: {note}", file=err)
        print(f"dutrain submit: {verb} config valid; shipping {n_files} files "
              f"({n_bytes / 1e6:.1f} MB) from {src or 'no working dir'}"
              f"{' + the dutrain package' if 'py_modules' in runtime_env else ''}; "
              f"env: {', '.join(sorted(env_vars))}"
              + (f"; {', '.join(f'{k}={v:g}' for k, v in resources.items())}"
                 if resources else ""),
              file=err)
        print(f"dutrain submit: entrypoint: {command}", file=err)
        job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env,
                                   submission_id=cfg.submission_id,
                                   metadata={"dutrain.verb": verb,
                                             "dutrain.version": dutrain.__version__},
                                   **resources)
    return client, job_id


#: the probe job: prints where `dutrain` is, or the PATH it was looked up in
PROBE = 'command -v dutrain || { echo "PATH=$PATH"; exit 3; }'


def check_entrypoint(client: Any, url: str, err: TextIO, timeout_s: float = 60.0) -> None:
    """Run a tiny job (no upload) that looks for `dutrain` where the job will run: a head
    started with `.venv/bin/ray start` from a shell without the venv activated has no `dutrain`
    on its PATH, and the real job would fail only after the upload (`dutrain: not found`)."""
    probe = client.submit_job(entrypoint=PROBE, metadata={"dutrain.probe": "entrypoint"})
    try:
        status = wait_terminal(client, probe, timeout_s=timeout_s, poll_s=0.2)
        if status == "SUCCEEDED":
            return
        if status != "FAILED":  # still pending (a busy cluster): do not block the submission
            print(f"dutrain submit: note: the entrypoint check did not finish in "
                  f"{timeout_s:g} s ({status}); submitting anyway", file=err)
            with contextlib.suppress(Exception):
                client.stop_job(probe)
            return
        logs = client.get_job_logs(probe)
    finally:
        with contextlib.suppress(Exception):
            if client.get_job_status(probe).is_terminal():
                client.delete_job(probe)
    path = next((ln[5:] for ln in logs.splitlines() if ln.startswith("PATH=")), "?")
    raise UserError(f"the cluster at {url} cannot run the job: `dutrain` is not on the PATH of "
                    f"its Ray processes (PATH={path}). Start the head from the environment that "
                    f"has dutrain installed with its bin/ on PATH (e.g. `source .venv/bin/"
                    f"activate && ray start --head ...`), or install dutrain in the cluster's "
                    f"image; --no-check skips this check")


def follow(client: Any, job_id: str, out: TextIO, poll_s: float = 0.5) -> str:
    """Stream the job's logs (secrets masked) until it ends; returns its final status."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(scrub(chunk))
            out.flush()

    asyncio.run(tail())
    return wait_terminal(client, job_id, timeout_s=None, poll_s=poll_s)


def wait_terminal(client: Any, job_id: str, timeout_s: float | None, poll_s: float = 0.5) -> str:
    """Poll until the job reaches a final state (or the timeout); returns the last status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or (deadline is not None and time.monotonic() >= deadline):
            return str(status)
        time.sleep(poll_s)


def _describe(info: Any) -> str:
    def when(ms: int | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"
    lines = [f"submission_id: {info.submission_id}", f"status:        {info.status}",
             f"entrypoint:    {info.entrypoint}", f"started:       {when(info.start_time)}",
             f"ended:         {when(info.end_time)}"]
    if info.message:
        lines.append(f"message:       {info.message}")
    return scrub("\n".join(lines))


def usage() -> str:
    """`dutrain submit --help`: the forms, then every flag with its config key, default and doc."""
    rows = {key: (default, doc) for key, default, doc in help_rows(SubmitConfig)}
    lines = [__doc__.strip().splitlines()[0], "", "usage:",
             "  dutrain submit VERB [--config FILE] [flags] [key=value ...]   submit a verb's job",
             "  dutrain submit --status ID | --logs ID [--follow] | --stop ID | --list", "",
             "key=value arguments after VERB are the verb's own (see dutrain VERB --help); the "
             "verb's config is", "validated here before anything is uploaded.", "", "flags:"]
    for flag in FLAG_TABLE:
        if flag.key is None:
            continue  # --config and the actions are in the usage lines above
        default, doc = rows[flag.key]
        name = f"{flag.name} {flag.metavar}" if flag.metavar else flag.name
        if flag.short:
            name = f"{flag.short}, {name}"
        if flag.key == "ship_package":
            doc, default = "do not ship this dutrain package (the cluster's install runs)", "null"
        elif flag.key == "check_entrypoint":
            doc, default = ("skip the check that the cluster finds `dutrain` on its PATH (a tiny "
                            "job run before the upload)"), "null"
        doc += " (repeatable)" if flag.repeatable else ""
        doc += "" if default in ("null", "false", "[]") else f" [default: {default}]"
        wrapped = textwrap.wrap(doc, 72) or [""]
        lines.append(f"  {name:<22} {wrapped[0]}")
        lines += [" " * 25 + w for w in wrapped[1:]]
    lines += ["", "auth: $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else "
                  "~/.ray/auth_token (RAY_AUTH_MODE=disabled: none)",
              "exit codes: 0 SUCCEEDED/done, 1 FAILED, 2 usage or config error, 3 STOPPED, "
              "4 cluster unreachable, auth refused or unknown job"]
    return "\n".join(lines)


def run(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of `dutrain submit` (the CLI passes the raw argv after the verb)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        req = parse_argv(argv)
        if req.action == "help":
            print(usage(), file=out)
            return EXIT_OK
        cfg = load_config(SubmitConfig, overrides=req.settings, verb="submit")
    except ConfigError as exc:
        msg = str(exc)
        for flag in FLAG_TABLE:  # name the flag the user typed
            if flag.key:
                msg = msg.replace(f"'{flag.key}'", f"'{flag.key}' ({flag.name})", 1)
        raise ConfigError(msg) from None
    try:
        return _act(req, cfg, out, err)
    except UserError:
        raise  # the CLI prints it: `dutrain submit: error: ...`, exit 2
    except KeyboardInterrupt:
        print("dutrain submit: interrupted; the job keeps running "
              "(dutrain submit --stop ID stops it)", file=err)
        return 130
    except Exception as exc:  # the cluster's answer: unreachable, refused, unknown job
        print(f"dutrain submit: {type(exc).__name__}: {scrub(str(exc)).strip()}", file=err)
        return EXIT_CLUSTER


def _act(req: Request, cfg: SubmitConfig, out: TextIO, err: TextIO) -> int:
    if req.action == "submit":
        client, job_id = submit(req, cfg, err)
        print(job_id, file=out, flush=True)
        print(f"dutrain submit: follow with: dutrain submit --logs {job_id} --follow"
              f"{' --address ' + cfg.address if cfg.address else ''}", file=err)
        if not cfg.follow:
            return EXIT_OK
        return _final(follow(client, job_id, out), job_id, err)
    client = connect(cfg.address)
    if req.action == "list":
        for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{info.submission_id or info.job_id}  {str(info.status):9}  "
                  f"{scrub(info.entrypoint)[:100]}", file=out)
        return EXIT_OK
    if req.action == "status":
        print(_describe(client.get_job_info(req.job_id)), file=out)
        return EXIT_OK
    if req.action == "logs":
        if cfg.follow:
            return _final(follow(client, req.job_id, out), req.job_id, err)
        out.write(scrub(client.get_job_logs(req.job_id)))
        return EXIT_OK
    # stop
    requested = client.stop_job(req.job_id)
    status = wait_terminal(client, req.job_id, timeout_s=cfg.wait_s)
    print(f"dutrain submit: {req.job_id}: {status}"
          f"{'' if requested else ' (was not running)'}", file=err)
    print(status, file=out)
    return EXIT_OK if status in STATUS_EXIT else EXIT_FAILED


def _final(status: str, job_id: str, err: TextIO) -> int:
    print(f"dutrain submit: job {job_id} ended: {status}", file=err)
    return STATUS_EXIT.get(status, EXIT_FAILED)
