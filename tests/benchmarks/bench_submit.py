"""Job-submission overhead of `dutrain submit` on a local token-auth Ray head (127.0.0.1).

Per submission, medians over REPEATS:
- `submit_s`: `dutrain submit VERB` from call to submission id (config validation, staging the
  working dir, zip + upload, submit_job);
- `to_running_s`: submission id → status RUNNING (runtime env set-up, driver start);
- `submit_to_running_s`: the sum, what a user waits before the job runs (Ray skips the upload
  of a working dir it already holds, so the first submission is reported on its own);
and the same for a bare `JobSubmissionClient.submit_job("echo")` with no runtime_env (Ray's floor).

    .venv/bin/python tests/benchmarks/bench_submit.py
Prints JSON.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "integration")]

from test_submit import end_session, start_head  # noqa: E402

REPEATS = 5


def _wait_running(client, job_id: str, poll_s: float = 0.02) -> float:
    t0 = time.perf_counter()
    while str(client.get_job_status(job_id)) == "PENDING":
        time.sleep(poll_s)
    return time.perf_counter() - t0


def main() -> None:
    from ray.job_submission import JobSubmissionClient

    from dutrain.submit import run

    token = secrets.token_hex(16)
    d = Path(tempfile.mkdtemp(prefix="dtbench", dir="/tmp"))
    proc, url = start_head(d, token)
    try:
        os.environ["RAY_AUTH_TOKEN"] = token
        client = JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"})
        out_dir = d / "out"
        rows: dict[str, list[tuple[float, float]]] = {"dutrain_submit": [], "bare_submit_job": []}
        for i in range(REPEATS):
            # a tiny real generate job (its run time is not measured here)
            out = io.StringIO()
            t0 = time.perf_counter()
            rc = run(["generate", "--address", url, f"output={out_dir / str(i)}", "samples=4",
                      "image_size=32", "progress=false", "tracking.enabled=false"], out,
                     io.StringIO())
            submit_s = time.perf_counter() - t0
            assert rc == 0
            job_id = out.getvalue().split()[0]
            rows["dutrain_submit"].append((submit_s, _wait_running(client, job_id)))
            client.stop_job(job_id)

            t0 = time.perf_counter()
            job_id = client.submit_job(entrypoint="echo ok")
            submit_s = time.perf_counter() - t0
            rows["bare_submit_job"].append((submit_s, _wait_running(client, job_id)))
        for job in client.list_jobs():  # let stopped jobs settle before the head goes away
            client.stop_job(job.submission_id)

        def summary(pairs: list[tuple[float, float]]) -> dict[str, float]:
            return {"first_submit_to_running_s": round(sum(pairs[0]), 3),  # with the upload
                    "submit_s": round(statistics.median(p[0] for p in pairs), 3),
                    "to_running_s": round(statistics.median(p[1] for p in pairs), 3),
                    "submit_to_running_s": round(statistics.median(sum(p) for p in pairs), 3)}

        print(json.dumps({"repeats": REPEATS, "cpus": os.cpu_count(),
                          **{k: summary(v) for k, v in rows.items()}}, indent=2))
    finally:
        end_session(proc.pid)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
