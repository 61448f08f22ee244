"""Progress bars for stages whose steps run in Ray workers.

Workers do not print to the driver (`log_to_driver=False` keeps the console readable), so rank 0
posts its step to a small named actor and a driver thread turns the posts into a tqdm bar on
stderr. Posting is fire-and-forget: a slow or dead board never stalls training.
"""

from __future__ import annotations

import sys
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import ray
from tqdm import tqdm

_handles: dict[str, Any] = {}


class _Board:
    def __init__(self) -> None:
        self.step, self.metrics = 0, {}

    def post(self, step: int, metrics: Mapping[str, float]) -> None:
        self.step, self.metrics = step, {**self.metrics, **metrics}

    def latest(self) -> tuple[int, dict[str, float]]:
        return self.step, self.metrics


def post_step(board: str | None, step: int, metrics: Mapping[str, float] | None = None) -> None:
    """Called by a worker (rank 0): report `step` and a few metrics to the driver's bar."""
    if not board:
        return
    name, namespace = board.split("@", 1)
    try:
        if board not in _handles:
            _handles[board] = ray.get_actor(name, namespace=namespace)
        _handles[board].post.remote(step, dict(metrics or {}))
    except Exception:  # noqa: BLE001 - progress is best effort, training is not
        _handles.pop(board, None)


@contextmanager
def step_progress(total: int, desc: str, enabled: bool = True, show: tuple[str, ...] = (),
                  interval: float = 2.0) -> Iterator[str | None]:
    """Yield the board address workers pass to `post_step` (None when disabled); show a bar of
    `total` steps with the `show` metrics as its postfix until the block exits."""
    if not enabled:
        yield None
        return
    name = f"dutrain-progress-{uuid.uuid4().hex[:8]}"
    namespace = ray.get_runtime_context().namespace
    actor = ray.remote(num_cpus=0)(_Board).options(name=name, namespace=namespace).remote()
    stop = threading.Event()
    bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def refresh() -> None:
        try:
            step, metrics = ray.get(actor.latest.remote(), timeout=interval)
        except Exception:  # noqa: BLE001 - a missed refresh is harmless
            return
        shown = {k.replace("/", "_"): f"{metrics[k]:.4g}" for k in show if k in metrics}
        if shown:
            bar.set_postfix(shown, refresh=False)
        bar.update(max(0, step - bar.n))
        bar.refresh()

    def watch() -> None:
        while not stop.wait(interval):
            refresh()

    t = threading.Thread(target=watch, name=desc + "-progress", daemon=True)
    t.start()
    try:
        yield f"{name}@{namespace}"
    finally:
        stop.set()
        t.join(interval * 2)
        refresh()  # the last posts, however short the run
        bar.close()
        ray.kill(actor)
