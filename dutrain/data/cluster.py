"""Joining or starting the Ray cluster that runs the data pipeline."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

#: variables the S3 client reads; those set on the driver are forwarded to the tasks (Ray
#: runtime_env) so its credentials reach a cluster started without them. They are never written
#: to config, params or the card; on a shared cluster prefer instance roles and leave them unset.
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
           "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


@contextlib.contextmanager
def ray_session(rcfg: Any) -> Iterator[Any]:
    """Use the Ray connection already open in this process, else join/start one per `rcfg`.

    `ray.address` null/'local' starts a private cluster on 127.0.0.1 (`ray.num_cpus` CPUs, default
    all); 'auto' or HOST:PORT joins a running cluster, whose every node then takes tasks.
    """
    import ray
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if rcfg.address in (None, "local"):
        ray.init(address="local", num_cpus=rcfg.num_cpus, include_dashboard=False,
                 namespace=rcfg.namespace, _node_ip_address="127.0.0.1", log_to_driver=False)
    else:
        ray.init(address=rcfg.address, namespace=rcfg.namespace, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}
