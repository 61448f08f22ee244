"""Config sections shared by several verbs: tracking, storage, Ray, reward weights, serving."""

from __future__ import annotations

from dataclasses import fields

from dutrain.rewards import DEFAULT_WEIGHTS

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


@configclass
class RewardWeights:
    """Weights of the reward `total` (docs/design.md §6); the defaults, `DEFAULT_WEIGHTS`, sum
    to 1."""

    format: float = option(DEFAULT_WEIGHTS["format"], "weight of the format component", min=0)
    type: float = option(DEFAULT_WEIGHTS["type"], "weight of the type component", min=0)
    key: float = option(DEFAULT_WEIGHTS["key"], "weight of the key component", min=0)
    value: float = option(DEFAULT_WEIGHTS["value"], "weight of the value component", min=0)

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@configclass
class GenerationConfig:
    """How a model is served for evaluation (vLLM workers as Ray actors)."""

    workers: int = option(1, "vLLM workers (Ray actors), each with its own engine", min=1)
    cpus_per_worker: float = option(1.0, "CPUs reserved per worker", min=0)
    gpus_per_worker: float = option(0.0, "GPUs per worker (0 on CPU)", min=0)
    batch_size: int = option(16, "images per generate call", min=1)
    max_tokens: int = option(384, "completion length limit (tokens)", min=1)
    temperature: float = option(0.0, "sampling temperature (0 = greedy)", min=0)
    structured: bool = option(False, "constrain decoding to the answer grammar")
    dtype: str = option("float32", "engine dtype",
                        choices=("float32", "bfloat16", "float16", "auto"))
    max_model_len: int = option(1024, "engine context length (tokens)", min=64)
    seed: int = option(0, "sampling seed")
