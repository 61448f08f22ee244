"""`openai.*`: how `model=openai:BASE_URL[#MODEL]` reaches an OpenAI-compatible endpoint."""

from __future__ import annotations

from urllib.parse import urlsplit

from .core import ConfigError, configclass, option

PREFIX = "openai:"
PROMPTS = ("project", "generalist")


@configclass
class OpenAIConfig:
    # The API key itself never lives in a config: only the name of the variable that holds it.
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key (sent "
                                                "as a Bearer token when set; never logged)")
    prompt: str = option("project", "'project': the training prompt (our checkpoints); "
                                    "'generalist': also states the taxonomy, keys, ranges and the "
                                    "answer format", choices=PROMPTS)
    concurrency: int = option(4, "requests in flight at once", min=1)
    timeout_s: float = option(120.0, "seconds to wait for one response", min=0.01)
    max_retries: int = option(4, "retries of a request after 429/5xx/timeout/connection errors "
                                 "(exponential backoff)", min=0)
    backoff_s: float = option(1.0, "first retry delay in seconds (doubles each retry)", min=0)
    max_requests: int | None = option(None, "budget: at most this many HTTP requests (retries "
                                            "included); samples left unasked are reported "
                                            "missing and a rerun asks for them", min=0)
    cache: str | None = option(None, "response cache folder (default: OUTPUT/openai_cache); a "
                                     "rerun never pays twice for the same request")


def split_spec(spec: str) -> tuple[str, str | None]:
    """'openai:BASE_URL[#MODEL]' → (BASE_URL without a trailing '/', MODEL or None)."""
    rest = spec[len(PREFIX):]
    base, _, model = rest.partition("#")
    return base.rstrip("/"), (model or None)


def check_spec(key: str, spec: str) -> None:
    """A ConfigError naming `key` unless `spec` is openai:http(s)://HOST[:PORT][/PATH][#MODEL]."""
    base, _ = split_spec(spec)
    parts = urlsplit(base)
    ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    if ok:
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            ok = False
    if not ok:
        raise ConfigError(f"bad value for '{key}': {spec!r} (allowed: "
                          f"'openai:http(s)://HOST[:PORT]/PATH[#MODEL]', e.g. "
                          f"'openai:http://127.0.0.1:8000/v1')")
