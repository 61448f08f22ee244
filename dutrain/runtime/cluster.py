"""Joining or starting the Ray cluster that runs the data pipeline."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any, Iterator

import ray

#: variables the S3 client reads; on a private local cluster those set on the driver are forwarded
#: to the tasks (Ray runtime_env) so they reach workers started before they were set. They are
#: never written to config, params or the card.
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
           "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


@contextlib.contextmanager
def ray_session(rcfg: Any) -> Iterator[Any]:
    """Use the Ray connection already open in this process, else join/start one per `rcfg`.

    `ray.address` null/'local' starts a private cluster on 127.0.0.1 (`ray.num_cpus` CPUs, default
    all); 'auto' or HOST:PORT joins a running cluster, whose every node then takes tasks.
    """
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    before = _children()
    try:  # a Ctrl-C (or a failure) inside ray.init must not leave its GCS/raylet running
        if rcfg.address in (None, "local"):
            ray.init(address="local", num_cpus=rcfg.num_cpus, include_dashboard=False,
                     namespace=rcfg.namespace, _node_ip_address="127.0.0.1", log_to_driver=False)
        else:
            ray.init(address=rcfg.address, namespace=rcfg.namespace, log_to_driver=False)
    except BaseException:
        _shutdown(ray)
        # interrupted before ray.init recorded its node, ray.shutdown() knows nothing of the
        # processes it had started: end the children this start-up left behind
        _end_processes(_children() - before)
        raise
    try:
        yield ray
    finally:
        _shutdown(ray)


def _children() -> set[int]:
    """Pids of this process's direct children (Linux /proc; empty elsewhere)."""
    me, out = os.getpid(), set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                out.add(int(e))
    return out


def _end_processes(pids: set[int]) -> None:
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.add(pid)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            for pid in list(alive):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        alive.discard(pid)
                except ChildProcessError:
                    alive.discard(pid)
            time.sleep(0.05)
        pids = alive


def _shutdown(ray: Any) -> None:
    """ray.shutdown(), finished even when a second Ctrl-C arrives while it runs."""
    restore = None
    if threading.current_thread() is threading.main_thread():
        try:
            restore = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:
            restore = None
    try:
        ray.shutdown()
    finally:
        if restore is not None:
            signal.signal(signal.SIGINT, restore)


def is_private(ray: Any) -> bool:
    """True when every node of the cluster lives on this machine's loopback (a local cluster)."""
    return all(n["NodeManagerAddress"].startswith("127.") for n in ray.nodes() if n["Alive"])


def forwarded_env(ray: Any) -> dict[str, str]:
    """The driver's AWS_* variables, for a private local cluster only: a shared cluster brings its
    own credentials, and a runtime_env is visible to everyone who can read the cluster's state."""
    if not is_private(ray):
        return {}
    return {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}
