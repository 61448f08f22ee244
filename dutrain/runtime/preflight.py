"""Checks every verb runs on its inputs, outputs and services before Ray or a model starts.

Each check raises :class:`PreflightError` (a `UserError`: one line, exit 2) naming the config
key, the path or URI and what to do. They only look (stat, list, a header, one HTTP request with
a short timeout); they never read a dataset or load a model.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from dutrain.config.secrets import scrub
from dutrain.errors import UserError
from dutrain.io.dataset import DatasetError, check_dataset
from dutrain.io.storage import filesystem
from dutrain.models.loading import CheckpointError, check_model_dir
from dutrain.tracking.mlflow_run import tracking_uri

#: seconds the tracking-server probe waits for an answer
TRACKING_PROBE_TIMEOUT_S = 3.0


class PreflightError(UserError):
    """An input, output or service a verb needs is not usable; the message says which and why."""


# ----------------------------------------------------------------------------------- S3 errors

def s3_problem(exc: BaseException, uri: str) -> str | None:
    """One line for an S3 failure (bucket, credentials, endpoint), else None."""
    name = type(exc).__name__
    text = str(exc)
    bucket = uri[len("s3://"):].split("/", 1)[0] if uri.startswith("s3://") else uri
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError") or \
            "Unable to locate credentials" in text:
        return (f"no S3 credentials for '{uri}': set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE, an instance role)")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ConnectionClosedError") or "Could not connect to the endpoint" in text:
        return (f"S3 endpoint unreachable for '{uri}' ({text.strip()[:160]}); check "
                f"storage.endpoint_url / $AWS_ENDPOINT_URL and the network")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"S3 bucket '{bucket}' does not exist (for '{uri}'); create it or fix the URI"
    if any(k in text for k in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                               "Forbidden", "403")) or isinstance(exc, PermissionError):
        return (f"S3 refused access to '{uri}' ({text.strip()[:160]}); check the credentials "
                f"in AWS_* and the bucket's permissions")
    return None


@contextlib.contextmanager
def s3_errors(key: str, uri: str) -> Iterator[None]:
    """Turn an S3 failure on `uri` into one PreflightError line naming `key`."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # botocore/aiobotocore/s3fs raise many unrelated types
        if not str(uri).startswith("s3://"):
            raise
        msg = s3_problem(exc, uri)
        if msg is None:
            msg = f"S3 error on '{uri}': {type(exc).__name__}: {str(exc).strip()[:200]}"
        raise PreflightError(f"'{key}': {msg}") from None


def _s3_kind(key: str, uri: str, storage: Any) -> str | None:
    """'dir', 'file' or None (absent) for an s3:// URI; S3 failures become PreflightError."""
    with s3_errors(key, uri):
        fs, path = filesystem(uri, storage)
        bucket = path.split("/", 1)[0]
        try:  # the bucket exists and we may read it
            fs.info(bucket)
        except FileNotFoundError:
            raise PreflightError(f"'{key}': S3 bucket '{bucket}' does not exist (for '{uri}'); "
                                 f"create it or fix the URI") from None
        if path.rstrip("/") == bucket:
            return "dir"
        fs.invalidate_cache()
        if fs.isfile(path):
            return "file"
        return "dir" if fs.isdir(path) else None


# ------------------------------------------------------------------------------------- paths

def existing_dir(key: str, path: str | None, storage: Any = None, what: str = "a folder") -> None:
    """`path` must be an existing folder (local) or a reachable s3:// prefix."""
    if not path:
        raise PreflightError(f"missing value for '{key}' ({what})")
    if str(path).startswith("s3://"):
        kind = _s3_kind(key, str(path), storage)
        if kind == "file":
            raise PreflightError(f"bad value for '{key}': '{path}' is a file, not {what}")
        if kind is None:
            raise PreflightError(f"bad value for '{key}': '{path}' does not exist (nothing "
                                 f"under that prefix)")
        return
    p = Path(str(path)).expanduser()
    if p.is_file():
        raise PreflightError(f"bad value for '{key}': '{path}' is a file, not {what}")
    if not p.is_dir():
        raise PreflightError(f"bad value for '{key}': '{path}' does not exist")
    if not os.access(p, os.R_OK | os.X_OK):
        raise PreflightError(f"bad value for '{key}': '{path}' is not readable")


def existing_file(key: str, path: str | None, what: str = "a file") -> None:
    if not path:
        raise PreflightError(f"missing value for '{key}' ({what})")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        raise PreflightError(f"bad value for '{key}': '{path}' is a folder, not {what}")
    if not p.is_file():
        raise PreflightError(f"bad value for '{key}': '{path}' does not exist")


def dataset(key: str, root: str | None, storage: Any = None) -> None:
    """`root` must be a readable dutrain dataset (`dutrain.io.dataset.check_dataset`: a folder or
    s3:// prefix of complete, undamaged Parquet part files)."""
    existing_dir(key, root, storage, "a dataset folder")
    try:
        with s3_errors(key, str(root)):
            check_dataset(str(root), storage)
    except DatasetError as exc:
        raise PreflightError(f"bad value for '{key}': {exc}") from None


def output_location(key: str, path: str | None, storage: Any = None) -> None:
    """An output folder that can be created and written: not a file, no file on its way, a
    writable parent; on s3:// a bucket that exists and accepts our credentials."""
    if not path:
        raise PreflightError(f"missing value for '{key}' (an output folder)")
    if str(path).startswith("s3://"):
        if _s3_kind(key, str(path), storage) == "file":
            raise PreflightError(f"bad value for '{key}': '{path}' is a file, not a folder")
        return
    if "://" in str(path) and not str(path).startswith("file://"):
        return  # another fsspec scheme: its own errors
    p = Path(str(path).removeprefix("file://")).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise PreflightError(f"bad value for '{key}': '{path}' is a file, not a folder; choose "
                             f"another output or remove the file")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PreflightError(f"bad value for '{key}': cannot create '{path}': '{probe}' is a "
                             f"file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PreflightError(f"bad value for '{key}': cannot write to '{probe}' (permission "
                             f"denied); choose an output folder you can write")


def model(key: str, ref: str | None, storage: Any = None) -> None:
    """A model reference that can only fail later: a local path must be a checkpoint folder with
    a readable config.json and intact safetensors; an s3:// prefix must exist. 'tiny', hub ids
    and baselines pass."""
    if not ref or ref == "tiny":
        return
    ref = str(ref)
    if re.match(r"[a-z][a-z0-9+.-]*:", ref) and not ref.startswith("s3://"):
        return  # baseline:…, openai:…: not a path; their own code checks them
    if ref.startswith("s3://"):
        kind = _s3_kind(key, ref, storage)
        if kind != "dir":
            raise PreflightError(f"bad value for '{key}': '{ref}' is "
                                 f"{'a file' if kind else 'not there'}, not a checkpoint prefix")
        return
    p = Path(ref).expanduser()
    local = p.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1
    if not local:
        return  # a hub id
    if p.is_file():
        raise PreflightError(f"bad value for '{key}': '{ref}' is a file, not a checkpoint folder")
    if not p.is_dir():
        raise PreflightError(f"bad value for '{key}': '{ref}' does not exist (allowed: 'tiny', "
                             f"a checkpoint folder, an s3:// prefix or a hub id)")
    try:
        check_model_dir(p)
    except CheckpointError as exc:
        raise PreflightError(f"bad value for '{key}': {exc}") from None


# ---------------------------------------------------------------------------------- tracking

def tracking(tcfg: Any, required: bool = False) -> None:
    """Probe the MLflow tracking server once, with a short timeout, when tracking is on (or
    `required`, as for compare, which reads runs): an unreachable server fails here in seconds
    instead of hanging in MLflow's HTTP retries for minutes."""
    if tcfg is None or not (required or getattr(tcfg, "enabled", True)):
        return
    uri = tracking_uri(getattr(tcfg, "uri", None))
    scheme = urllib.parse.urlparse(uri).scheme
    fix = "start the server or fix tracking.uri / $MLFLOW_TRACKING_URI" + (
        "" if required else ", or set tracking.enabled=false to run without tracking")
    if scheme in ("http", "https"):
        probe_http(uri, getattr(tcfg, "experiment", "dutrain"), fix)
    elif scheme == "sqlite":
        db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if db and db != ":memory:":
            parent = Path(db).absolute().parent
            if not parent.is_dir():
                raise PreflightError(f"MLflow tracking URI '{uri}': folder '{parent}' does not "
                                     f"exist; {fix}")
            if Path(db).is_dir():
                raise PreflightError(f"MLflow tracking URI '{uri}' names a folder, not a "
                                     f"database file; {fix}")


def probe_http(uri: str, experiment: str, fix: str) -> None:
    url = (uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name?"
           + urllib.parse.urlencode({"experiment_name": experiment}))
    headers = {}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
    not_mlflow = (f"MLflow tracking server '{scrub(uri)}' did not answer as an MLflow server "
                  f"(HTTP {{}}, no MLflow JSON); {fix}")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=TRACKING_PROBE_TIMEOUT_S) as resp:
            if _mlflow_json(resp.read(65536)):
                return
            raise PreflightError(not_mlflow.format(resp.status))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PreflightError(f"MLflow tracking server '{scrub(uri)}' refused us (HTTP "
                                 f"{exc.code}); set MLFLOW_TRACKING_TOKEN or "
                                 f"MLFLOW_TRACKING_USERNAME/PASSWORD") from None
        body = exc.read(65536) if exc.fp is not None else b""
        if exc.code == 404 and b"error_code" in body and _mlflow_json(body):
            return  # the server answered: no such experiment yet (it is created on first use)
        raise PreflightError(not_mlflow.format(exc.code)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        raise PreflightError(f"MLflow tracking server '{scrub(uri)}' is unreachable ({why}, "
                             f"waited up to {TRACKING_PROBE_TIMEOUT_S:g} s); {fix}") from None


def _mlflow_json(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body or b"null"), dict)
    except ValueError:
        return False
