"""Config sections shared by every verb: tracking, storage, Ray."""

from __future__ import annotations

from .core import ConfigError, configclass, option


@configclass
class TrackingConfig:
    uri: str | None = option(None, "MLflow tracking URI; else $MLFLOW_TRACKING_URI; else "
                                   "sqlite:///mlflow.db in the working directory")
    experiment: str = option("dutrain", "MLflow experiment (one per project)")
    run_name: str | None = option(None, "MLflow run name (default: the verb and a timestamp)")
    enabled: bool = option(True, "log to MLflow at all")


@configclass
class StorageConfig:
    # Credentials never live here: they come from AWS_* variables or an instance role.
    endpoint_url: str | None = option(None, "S3-compatible endpoint (else $AWS_ENDPOINT_URL)")
    region: str | None = option(None, "S3 region (else $AWS_DEFAULT_REGION)")


@configclass
class RayConfig:
    address: str | None = option(None, "Ray cluster address: null/'local' starts a local "
                                       "cluster on 127.0.0.1, 'auto' joins the running one")
    num_cpus: int | None = option(None, "CPUs of a local cluster (default: all)", min=1)
    namespace: str = option("dutrain", "Ray namespace")

    def validate(self) -> None:
        a = self.address
        if a not in (None, "local", "auto") and not (a.startswith("ray://") or ":" in a):
            raise ConfigError(f"bad value for 'ray.address': {a!r} (allowed: null, 'local', "
                              f"'auto', 'HOST:PORT' or 'ray://HOST:PORT')")
