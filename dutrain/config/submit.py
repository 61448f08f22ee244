"""Config of `dutrain submit`: how a verb is shipped to a Ray cluster as a Ray job.

These keys are set with `--flags` (see `dutrain submit --help`); key=value arguments after the
verb belong to the submitted verb, not to submit.
"""

from __future__ import annotations

from .core import ConfigError, configclass, option

#: working-directory entries never shipped (environments, VCS data, local outputs and stores)
DEFAULT_EXCLUDES = (".venv", "venv", ".git", "runs", "mlruns", "mlflow.db", "__pycache__",
                    "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info", "build", "dist",
                    "node_modules")


@configclass
class SubmitConfig:
    address: str | None = option(None, "Ray dashboard/job-server URL, e.g. "
                                       "http://127.0.0.1:8265; else $RAY_ADDRESS; else "
                                       "http://127.0.0.1:8265")
    follow: bool = option(False, "stream the job's logs until it ends and exit with its status")
    entrypoint_num_cpus: float | None = option(
        None, "CPUs reserved for the job's driver (default: 1 for generate, else none)", min=0)
    entrypoint_num_gpus: float | None = option(
        None, "GPUs reserved for the job's driver (default: none; Ray Train and the RL worker "
              "groups reserve their own GPUs)", min=0)
    env: list[str] = option(default_factory=list, doc="extra variables for the job: NAME (value "
                            "taken from here) or NAME=VALUE; secret names are refused (the "
                            "cluster provides secrets: Kubernetes secrets, instance roles)")
    working_dir: str | None = option(None, "directory shipped as the job's working directory "
                                           "(default: the dutrain checkout this runs from)")
    excludes: list[str] = option(default_factory=lambda: list(DEFAULT_EXCLUDES),
                                 doc="names/globs left out of the shipped working directory")
    ship_package: bool = option(True, "ship this dutrain package (py_modules) so the cluster "
                                      "runs exactly the local code")
    pip: list[str] = option(default_factory=list, doc="extra pip requirements installed for "
                                                      "the job (runtime_env pip)")
    check_entrypoint: bool = option(True, "before uploading, run a tiny job (no upload) that "
                                          "checks the cluster finds `dutrain` on its PATH")
    submission_id: str | None = option(None, "submission id (default: chosen by Ray)")
    wait_s: float = option(60.0, "--stop: seconds to wait for the job to reach a final state",
                           min=0)

    def validate(self) -> None:
        a = self.address
        if a is not None and not (a.startswith(("http://", "https://", "ray://")) or ":" in a
                                  or a == "auto"):
            raise ConfigError(f"bad value for 'address': {a!r} (allowed: a URL such as "
                              f"http://HOST:8265, ray://HOST:10001, HOST:PORT or 'auto')")
