"""Completions from any VLM behind an OpenAI-compatible chat-completions endpoint
(`model=openai:BASE_URL[#MODEL]`): a hosted API, or `vllm serve` of a checkpoint.

Each image goes as a base64 PNG data URL with the project's prompt (or the generalist prompt,
which also states the taxonomy and the answer format). Requests run in a thread pool of
`openai.concurrency`, are retried with exponential backoff on 429/5xx/timeouts/connection errors,
stop at the `openai.max_requests` budget, and every successful response is cached on disk under
the sha256 of (endpoint, model, prompt, image hash, sampling), so a rerun never pays twice.

The API key comes only from the environment (`openai.api_key_env`, default OPENAI_API_KEY) and
goes only into the Authorization header: never into errors, logs, params or artifacts.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from dutrain.config.openai import OpenAIConfig, split_spec
from dutrain.config.secrets import scrub
from dutrain.errors import UserError
from dutrain.models.prompts import INSTRUCTION
from dutrain.schema import TAXONOMY

#: raw response bodies kept in completions.jsonl are cut to this many characters
MAX_RAW_CHARS = 16_384
#: status codes worth retrying
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def generalist_instruction() -> str:
    """The prompt for a VLM that never saw our format: taxonomy, keys, ranges and format."""
    lines = [
        "Which degradations were applied to this image? Possible degradations (type: "
        "description; parameters with unit and range):"]
    for spec in TAXONOMY.values():
        params = "; ".join(f"{p.key} ({p.unit}, {p.format(p.valid[0])} to "
                           f"{p.format(p.valid[1])}{', integer' if p.integer else ''})"
                           for p in spec.params)
        lines.append(f"- {spec.type}: {spec.doc.rstrip('.')}. Parameters: {params}.")
    lines.append(
        "An image may have none, one or several degradations, at most one per stage, listed in "
        "this order: " + ", ".join(f"{s.type} (stage {s.stage})" for s in TAXONOMY.values())
        + ". Give every parameter of each degradation you name.")
    lines.append(
        "Answer in exactly this format: first your reasoning from measured cues inside "
        "<think></think>, then JSON inside <answer></answer>, for example:\n"
        "<think>streaks and a washed-out contrast</think>\n"
        '<answer>{"degradations": [{"type": "haze", "params": {"beta": 1.2, "airlight": 0.8}}, '
        '{"type": "rain", "params": {"density": 12, "length": 20, "angle": -10}}]}</answer>\n'
        'For a clean image: <answer>{"degradations": []}</answer>')
    return "\n".join(lines)


def instruction(prompt: str) -> str:
    return generalist_instruction() if prompt == "generalist" else INSTRUCTION


@dataclass
class Reply:
    """One sample's outcome: the completion text (None: no usable answer), the raw response
    body, an error (None when fine), and whether it came from the cache."""

    completion: str | None
    raw: str | None = None
    error: str | None = None
    cached: bool = False


@dataclass
class ClientStats:
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)


class _Budget(Exception):
    pass


def _png(data: bytes) -> bytes:
    if data[:8] == PNG_MAGIC:
        return data
    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class OpenAIClient:
    def __init__(self, spec: str, cfg: OpenAIConfig, gen: Any, cache_dir: str | os.PathLike):
        self.base, self.model = split_spec(spec)
        self.cfg = cfg
        self._key = os.environ.get(cfg.api_key_env) or None
        self.cache_dir = Path(cache_dir)
        self.sampling: dict[str, Any] = {"temperature": float(gen.temperature),
                                         "max_tokens": int(gen.max_tokens),
                                         "seed": int(gen.seed)}
        if gen.temperature == 0:
            self.sampling["top_p"] = 1.0
        self.extra: dict[str, Any] = {}
        if getattr(gen, "structured", False):
            # vLLM's extension (OpenAI's own API rejects it): the answer grammar, as in-process
            # lazy: dutrain.models.engine imports torch/transformers, needed only for the grammar
            from dutrain.models.engine import answer_grammar
            self.extra["structured_outputs"] = {"grammar": answer_grammar()}
        self.text = instruction(cfg.prompt)
        self.stats = ClientStats()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------- plumbing
    def _clean(self, text: str) -> str:
        """`text` safe to write anywhere: the key and other secrets masked."""
        if self._key:
            text = text.replace(self._key, "***")
        return scrub(text)

    def _http(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        """(status, body); raises OSError/TimeoutError on transport failures."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            try:
                payload = exc.read()
            except Exception:
                payload = b""
            return exc.code, payload

    def _spend(self) -> None:
        with self._lock:
            if self.cfg.max_requests is not None and self.stats.requests >= self.cfg.max_requests:
                raise _Budget()
            self.stats.requests += 1

    def _where(self) -> str:
        return f"OpenAI endpoint '{self._clean(self.base)}'"

    def _auth_error(self, status: int) -> UserError:
        return UserError(f"{self._where()} refused the request (HTTP {status}): set the API key "
                         f"in ${self.cfg.api_key_env} (openai.api_key_env names the variable)")

    # ------------------------------------------------------------------------------ models
    def check(self) -> str:
        """Reach the endpoint (GET /models) and settle the model name; a one-line UserError
        naming the URL when it is unreachable, refuses the key or lists no model."""
        try:
            status, body = self._http("GET", "/models", None)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"{self._where()} is unreachable: {self._clean(str(reason))} "
                            f"(model=openai:BASE_URL wants the API root, e.g. "
                            f"http://127.0.0.1:8000/v1)") from None
        if status in (401, 403):
            raise self._auth_error(status)
        if self.model:
            return self.model  # some endpoints list no models; the name was given
        if status != 200:
            raise UserError(f"{self._where()} answered GET /models with HTTP {status}; give the "
                            f"model name as model=openai:BASE_URL#MODEL")
        try:
            ids = [m["id"] for m in json.loads(body)["data"]]
        except (ValueError, KeyError, TypeError):
            ids = []
        if not ids:
            raise UserError(f"{self._where()} lists no model at GET /models; give the model "
                            f"name as model=openai:BASE_URL#MODEL")
        self.model = str(ids[0])
        return self.model

    # ----------------------------------------------------------------------------- requests
    def request_body(self, png: bytes) -> dict[str, Any]:
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        return {"model": self.model, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": self.text}]}], "n": 1, **self.sampling, **self.extra}

    def cache_key(self, png: bytes) -> str:
        ident = {"endpoint": self._clean(self.base), "model": self.model, "prompt": self.text,
                 "image": hashlib.sha256(png).hexdigest(), "sampling": self.sampling,
                 "extra": hashlib.sha256(json.dumps(self.extra, sort_keys=True).encode())
                 .hexdigest()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> Reply | None:
        try:
            d = json.loads(self._cache_path(key).read_text())
            return Reply(d["completion"], d.get("raw"), None, cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _store(self, key: str, reply: Reply) -> None:
        p = self._cache_path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"completion": reply.completion, "raw": reply.raw}))
        os.replace(tmp, p)

    def complete_one(self, data: bytes) -> Reply:
        png = _png(data)
        key = self.cache_key(png)
        hit = self._cached(key)
        if hit is not None:
            with self._lock:
                self.stats.cache_hits += 1
            return hit
        body = self.request_body(png)
        last = "no request made"
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            try:
                self._spend()
            except _Budget:
                return Reply(None, None, f"not asked: openai.max_requests="
                                         f"{self.cfg.max_requests} reached")
            try:
                status, payload = self._http("POST", "/chat/completions", body)
            except (TimeoutError, socket.timeout) as exc:
                last = f"timeout after {self.cfg.timeout_s:g} s ({type(exc).__name__})"
                continue
            except (OSError, ValueError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"timeout after {self.cfg.timeout_s:g} s"
                else:
                    last = f"connection error: {reason}"
                continue
            raw = self._clean(payload.decode("utf-8", "replace"))[:MAX_RAW_CHARS]
            if status in (401, 403):
                raise self._auth_error(status)
            if status in RETRY_STATUS:
                last = f"HTTP {status}"
                continue
            if status != 200:
                return Reply(None, raw, f"HTTP {status}")
            try:
                msg = json.loads(payload)["choices"][0]["message"]
                content = msg.get("content")
                if isinstance(content, list):  # some servers return content parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if not isinstance(content, str):
                    raise TypeError("no text content")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                return Reply(None, raw, f"unreadable response ({type(exc).__name__})")
            reply = Reply(content, raw)
            self._store(key, reply)
            return reply
        return Reply(None, None, f"gave up after {self.cfg.max_retries + 1} tries: {last}")

    def complete(self, pngs: Sequence[bytes]) -> list[Reply]:
        """Replies for `pngs`, in order; a UserError (auth) stops everything."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            replies = list(pool.map(self.complete_one, pngs))
        self.stats.seconds += time.perf_counter() - t0
        for r in replies:
            if r.error:
                self.stats.errors += 1
                kind = r.error.split(":")[0] if r.error.startswith("not asked") else \
                    r.error.split(" (")[0]
                self.stats.error_kinds[kind] = self.stats.error_kinds.get(kind, 0) + 1
        return replies
