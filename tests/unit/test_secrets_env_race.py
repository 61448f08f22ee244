"""Scrubbing must survive another thread changing os.environ (MLflow's telemetry thread removes
`_MLFLOW_TELEMETRY_SESSION_ID` at start-up; iterating os.environ then raised KeyError and killed
a `make demo` run before its first stage)."""

from __future__ import annotations

import os
import threading

from dutrain.config.secrets import MASK, scrub, secret_values


def test_secret_values_while_another_thread_churns_the_environment(monkeypatch):
    monkeypatch.setenv("DUTRAIN_TEST_API_KEY", "planted-secret-value")
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            os.environ[f"_DUTRAIN_CHURN_{i % 50}"] = "x"
            os.environ.pop(f"_DUTRAIN_CHURN_{(i + 25) % 50}", None)
            i += 1

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        for _ in range(3000):
            assert "planted-secret-value" in secret_values()
        assert scrub("key=planted-secret-value") == f"key={MASK}"
    finally:
        stop.set()
        t.join()
        for i in range(50):
            os.environ.pop(f"_DUTRAIN_CHURN_{i}", None)
