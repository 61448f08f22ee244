"""SFT data: Parquet rows → (degraded PNG, target text), read and prepared with Ray Data, one
deterministic shard per worker, and a seeded batch order that a resumed run can replay.

The target is the model text of docs/design.md §5: reasoning that cites cues measured on the
degraded image (`dutrain.degrade.measure_cues` / `write_reasoning`), then the canonical answer.
Cues are measured once per row here, in parallel Ray Data tasks, not per step. With `prompt:
cues` the cue sentence is the prompt's (the measurement tool's line) and the target's reasoning
keeps only the evidence part; the row then carries its cues (column `cues`, JSON) so the trainer
prompts with the very numbers measured here instead of measuring them again.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np
import ray.data
from pyarrow.fs import FSSpecHandler, PyFileSystem
from ray.data.expressions import col

from dutrain.config import ConfigError
from dutrain.degrade import measure_cues, write_reasoning
from dutrain.io.dataset import decode_png, parquet_dataset, read_table
from dutrain.io.storage import filesystem
from dutrain.models.prompts import check_prompt_mode
from dutrain.schema import render_answer, snap_annotation

TARGETS = ("reasoning", "answer")


def make_target(degraded_png: bytes, annotation: dict[str, Any] | str,
                mode: str = "reasoning", prompt: str = "plain", grid_factor: int = 1,
                cues: dict[str, float] | None = None) -> str:
    """The assistant text for one sample (`mode` 'answer' leaves the reasoning empty). With
    `prompt` 'cues' the measured cues are the prompt's, and the reasoning does not restate them.
    `grid_factor` > 1: the answer's values are the true ones snapped to the grid that many times
    coarser (docs/design.md §3, "Grid factor"). `cues`: the image's, when already measured."""
    ann = json.loads(annotation) if isinstance(annotation, str) else annotation
    check_prompt_mode(prompt)
    if grid_factor != 1:
        ann = snap_annotation(ann, grid_factor)
    if mode == "answer":
        return render_answer(ann, "")
    if mode != "reasoning":
        raise ValueError(f"target mode {mode!r} unknown; allowed: {', '.join(TARGETS)}")
    if cues is None:
        cues = measure_cues(decode_png(degraded_png))
    return render_answer(ann, write_reasoning(cues, ann, state_cues=prompt == "plain"))


def add_targets(batch: dict[str, Any], mode: str, prompt: str = "plain",
                grid_factor: int = 1) -> dict[str, Any]:
    """Ray Data batch function (numpy format): adds the `target` column and, with `prompt`
    'cues', the `cues` column (each row's measured cues as JSON, what its prompt states)."""
    measure = mode == "reasoning" or prompt == "cues"
    cues = [measure_cues(decode_png(p)) if measure else None for p in batch["degraded"]]
    batch["target"] = np.array([make_target(p, a, mode, prompt, grid_factor, c) for p, a, c in
                                zip(batch["degraded"], batch["annotation"], cues)], dtype=object)
    if prompt == "cues":
        batch["cues"] = np.array([json.dumps(c) for c in cues], dtype=object)
    return batch


def parquet_files(root: str, storage: Any = None) -> tuple[list[str], Any]:
    """The dataset's Parquet files in a fixed (sorted) order, and the pyarrow filesystem."""
    files = sorted(parquet_dataset(root, storage).files)  # refuses an empty or damaged dataset
    fs, _ = filesystem(root, storage)
    return files, PyFileSystem(FSSpecHandler(fs))


def prepared_splits(root: str, split: str, mode: str, num_shards: int, limit: int | None = None,
                    storage: Any = None, seed: int = 0, prompt: str = "plain",
                    grid_factor: int = 1) -> list[Any]:
    """Ray Datasets of (sample_id, degraded, target) for `split`, cut into `num_shards` parts.

    Deterministic: files are read in sorted order with order-preserving execution, so a
    restarted run gives every worker the same rows. `prompt`: the prompt mode the targets are
    written for and `grid_factor` the answer grid (`make_target`).
    """
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    files, fs = parquet_files(root, storage)
    ds = ray.data.read_parquet(files, filesystem=fs,
                               columns=["sample_id", "split", "degraded", "annotation"])
    ds = ds.filter(expr=col("split") == split)
    if limit is not None:  # the same spread subset every stage reads (read_table's `limit`)
        keep = set(read_table(root, [split], ["sample_id"], limit, storage)
                   .column("sample_id").to_pylist())
        ds = ds.filter(expr=col("sample_id").is_in(sorted(keep)))
    ds = ds.map_batches(add_targets, fn_kwargs={"mode": mode, "prompt": prompt,
                                                "grid_factor": grid_factor},
                        batch_format="numpy", batch_size=64)
    ds = ds.select_columns(["sample_id", "degraded", "annotation", "target",
                            *(["cues"] if prompt == "cues" else [])]).materialize()
    n = ds.count()
    if n < num_shards:
        raise ConfigError(f"dataset '{root}' has {n} '{split}' rows; need at least one per "
                          f"worker ({num_shards})")
    if num_shards == 1:
        return [ds]
    return ds.split(num_shards, equal=True)  # by row count: same rows per worker every run


def load_rows(iterator: Any) -> list[dict[str, Any]]:
    """All rows of a worker's shard, sorted by sample_id (order independent of block layout)."""
    rows = [{"sample_id": str(r["sample_id"]), "degraded": bytes(r["degraded"]),
             "annotation": str(r["annotation"]), "target": str(r["target"]),
             **({"cues": json.loads(r["cues"])} if "cues" in r else {})}
            for r in iterator.iter_rows()]
    rows.sort(key=lambda r: r["sample_id"])
    return rows


def batch_order(n_rows: int, batch_size: int, seed: int, rank: int, start_step: int,
                ) -> Iterator[tuple[int, np.ndarray]]:
    """(step, row indices) from `start_step` on: epoch e is a permutation seeded by (seed, rank,
    e); batches never straddle epochs (the last partial batch is dropped when n >= batch)."""
    per_epoch = max(1, n_rows // batch_size)
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, rank, epoch]).permutation(n_rows)
        idx = perm[k * batch_size:(k + 1) * batch_size]
        if len(idx) < batch_size:  # fewer rows than a batch: repeat the permutation
            idx = np.resize(perm, batch_size)
        yield step, idx
        step += 1
