"""`dutrain sft`: the driver. Prepares data with Ray Data, runs `TorchTrainer`, logs the run.

    output/train/       Ray Train run: checkpoint_*/ (HF model + trainer_state.pt), last K kept
    output/best/        HF model with the lowest validation loss so far (+ dutrain_sft.json)
    output/final/       HF model at the end (+ eval.json: the small validation evaluation)

Every saved model directory carries dutrain_prompt.json: the run's prompt mode (`prompt`), which
later stages read from the model (`dutrain.models.prompt_mode`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pyarrow.fs import FSSpecHandler, PyFileSystem
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dutrain.config import to_dict
from dutrain.config.sft import SFTConfig
from dutrain.io.storage import absolute, filesystem, is_remote
from dutrain.models import PROMPT_FILE, answer_grid, prompt_mode, resolve_model
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.tracking import stage_run, tracking_uri
from dutrain.tracking.progress import step_progress

from .data import prepared_splits
from .loop import train_loop

RUN_NAME = "train"



def _storage(output: str, storage: Any) -> tuple[str, Any]:
    """Ray Train's storage_path and filesystem for a local or s3:// output."""
    if not is_remote(output):
        return output, None
    fs, path = filesystem(output, storage)
    return path, PyFileSystem(FSSpecHandler(fs))


def _clear_previous(output: str, storage: Any,
                    subs: tuple[str, ...] = (RUN_NAME, "best", "final")) -> None:
    fs, path = filesystem(output, storage)
    for sub in subs:
        p = f"{path.rstrip('/')}/{sub}"
        if fs.exists(p):
            fs.rm(p, recursive=True)


def fit(loop: Callable[[dict[str, Any]], None], loop_cfg: dict[str, Any], scale: Any,
        output: str, storage: Any, datasets: dict[str, Any], total_steps: int, desc: str,
        progress: bool, show: tuple[str, ...] = ()) -> Any:
    """Run `loop` in Ray Train workers (`TorchTrainer`) with the run folder `output`/train as
    Ray's checkpoint store (a rerun on the same folder resumes from its latest checkpoint) and a
    progress bar of `total_steps` (rank 0 posts to `loop_cfg["progress"]`). `scale` carries
    num_workers, use_gpu, cpus_per_worker, keep_checkpoints and max_failures (the SFT config or
    the offline one); every worker gets every dataset whole. Returns Ray Train's Result."""
    storage_path, storage_fs = _storage(output, storage)
    with step_progress(total_steps, desc, progress, show=show) as board:
        trainer = TorchTrainer(
            loop,
            train_loop_config={**loop_cfg, "progress": board},
            scaling_config=ScalingConfig(num_workers=scale.num_workers, use_gpu=scale.use_gpu,
                                         resources_per_worker={"CPU": scale.cpus_per_worker}),
            run_config=RunConfig(
                name=RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                checkpoint_config=CheckpointConfig(num_to_keep=scale.keep_checkpoints),
                failure_config=FailureConfig(max_failures=scale.max_failures)),
            datasets=datasets,
            dataset_config=DataConfig(datasets_to_split=[]),
        )
        return trainer.fit()


def read_final_eval(output: str, storage: Any = None) -> dict[str, float]:
    fs, path = filesystem(output, storage)
    p = f"{path.rstrip('/')}/final/eval.json"
    return json.loads(fs.cat_file(p)) if fs.exists(p) else {}


def run(cfg: SFTConfig) -> int:
    # inputs, output and tracking server are checked before Ray or a model starts (one line)
    preflight.dataset("dataset", cfg.dataset, cfg.storage)
    preflight.model("model", cfg.model, cfg.storage)
    preflight.output_location("output", cfg.output, cfg.storage)
    preflight.tracking(cfg.tracking)
    output, dataset = absolute(cfg.output), absolute(cfg.dataset)
    # build the tiny model once for every worker, and check a local checkpoint before any work;
    # hub and s3 models are fetched by the workers themselves (not onto the driver)
    model_dir = cfg.model
    if cfg.model == "tiny" or Path(cfg.model).expanduser().is_dir():
        model_dir = str(resolve_model(cfg.model, storage=cfg.storage,
                                      tiny=cfg.tiny.spec() if cfg.model == "tiny" else None))
        # a model trained here in the other mode: allowed (this run sets the mode), but said
        mode, grid = prompt_mode(model_dir), answer_grid(model_dir)
        if Path(model_dir, PROMPT_FILE).is_file() and mode != cfg.prompt:
            print(f"note: model '{cfg.model}' was trained with prompt={mode}; "
                  f"this run trains (and records) prompt={cfg.prompt}", file=sys.stderr)
        if grid != cfg.grid_factor:
            print(f"note: model '{cfg.model}' answers on grid factor {grid}; "
                  f"this run trains (and records) grid_factor={cfg.grid_factor}", file=sys.stderr)
    if not cfg.resume:
        with preflight.s3_errors("output", output):
            _clear_previous(output, cfg.storage)
    conf = to_dict(cfg) | {"dataset": dataset, "output": output}
    with ray_session(cfg.ray), stage_run(cfg, "sft", params={"model_dir": model_dir}) as run:
        t0 = time.perf_counter()
        shards = prepared_splits(dataset, "train", cfg.target, cfg.num_workers, cfg.train_limit,
                                 cfg.storage, cfg.seed, prompt=cfg.prompt,
                                 grid_factor=cfg.grid_factor)
        val = prepared_splits(dataset, "val", cfg.target, 1,
                              max(cfg.val_samples, cfg.final_eval_samples), cfg.storage,
                              prompt=cfg.prompt, grid_factor=cfg.grid_factor)[0]
        prep_s = time.perf_counter() - t0
        rows = sum(s.count() for s in shards)
        run.log_metrics({"data/train_rows": rows, "data/val_rows": val.count(),
                         "data/prepare_seconds": prep_s})
        t1 = time.perf_counter()
        result = fit(train_loop, {"config": conf, "output": output, "run_id": run.run_id,
                                  "tracking_uri": tracking_uri(cfg.tracking.uri)},
                     cfg, output, cfg.storage, {f"train_{i}": s for i, s in enumerate(shards)}
                     | {"val": val}, cfg.max_steps, "sft", cfg.progress,
                     show=("train/loss", "val/loss"))
        train_s = time.perf_counter() - t1
        ckpt = result.checkpoint.path if result.checkpoint else None
        run.set_tags({"dutrain.ray_checkpoint": ckpt or "", "dutrain.output": output})
        run.log_metrics({"train/wall_seconds": train_s})
        final = read_final_eval(output, cfg.storage)
    summary = {"output": output, "last_checkpoint": ckpt, "train_seconds": round(train_s, 1),
               "prepare_seconds": round(prep_s, 1), "train_rows": rows,
               **{k: round(v, 4) for k, v in final.items()}}
    print(json.dumps(summary, indent=1))
    return 0
