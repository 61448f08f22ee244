"""RL checkpoints under the run's storage path (local directory or s3:// prefix).

    {output}/checkpoints/step_000010/model/          HF directory (config, safetensors, processor)
    {output}/checkpoints/step_000010/optimizer.pt    AdamW state (identical on every DDP rank)
    {output}/checkpoints/step_000010/state.json      step, policy version, data position, seed

`state.json` is written last, so a directory without it is an interrupted save and is ignored.
Randomness needs no saved state: prompt order is a permutation seeded by (seed, epoch), sampling
seeds and learner seeds are derived from (seed, step), so the data position and the step are
enough to continue exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dutrain.io.storage import copy_tree, filesystem, is_remote, join

STATE = "state.json"
_STEP = re.compile(r"step_(\d+)$")


def step_dir(output: str, step: int) -> str:
    return join(output, "checkpoints", f"step_{step:06d}")


def write_state(uri: str, state: dict[str, Any], storage: Any = None) -> None:
    fs, path = filesystem(uri, storage)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path.rstrip('/')}/{STATE}", "w") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)


def read_state(uri: str, storage: Any = None) -> dict[str, Any]:
    fs, path = filesystem(uri, storage)
    with fs.open(f"{path.rstrip('/')}/{STATE}", "r") as fh:
        return json.load(fh)


def latest_checkpoint(output: str, storage: Any = None) -> str | None:
    """URI of the newest complete checkpoint under `output`, or None."""
    fs, path = filesystem(join(output, "checkpoints"), storage)
    if not fs.exists(path):
        return None
    steps = []
    for p in fs.ls(path, detail=False):
        m = _STEP.search(p.rstrip("/"))
        if m and fs.exists(f"{p.rstrip('/')}/{STATE}"):
            steps.append(int(m.group(1)))
    return step_dir(output, max(steps)) if steps else None


def fetch_dir(uri: str, storage: Any = None) -> str:
    """A local copy of a checkpoint directory (the path itself when already local)."""
    if not is_remote(uri):
        return str(Path(filesystem(uri)[1]))
    local = tempfile.mkdtemp(prefix="dutrain-ckpt-")
    copy_tree(uri, local, storage)
    return local


def local_staging(uri: str) -> tuple[str, bool]:
    """Where to write a save for `uri`: the path itself, or a temp dir to upload (remote)."""
    if is_remote(uri):
        return tempfile.mkdtemp(prefix="dutrain-save-"), True
    p = Path(filesystem(uri)[1])
    if p.exists():
        shutil.rmtree(p)  # a half-written save of the same step from an interrupted run
    p.mkdir(parents=True)
    return str(p), False
