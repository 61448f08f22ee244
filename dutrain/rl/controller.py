"""`dutrain rl`: the single controller of the RL actor group.

One driver process owns the loop; workers only compute:

    prompts ─► RolloutGroup (vLLM actors: G completions, token ids, log-probs)
            ─► rewards (pure functions, here) ─► group advantages, token weights
            ─► LearnerGroup (DDP actors: GRPO step) ─► weight push to every engine
            ─► metrics (MLflow) ─► checkpoint

Everything the run needs (config, model, dataset rows) is checked before any actor starts.
`mode=async` keeps `max_staleness` rollout batches in flight: the batch for step t+1 is generated
while the learner trains on step t, and each batch records the policy version that sampled it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import ray
from tqdm import tqdm

from dutrain.config import ConfigError
from dutrain.config.rl import RLConfig
from dutrain.io.dataset import decode_png, read_table
from dutrain.io.storage import join
from dutrain.models import answer_grid, resolve_model
from dutrain.runtime import preflight
from dutrain.runtime.cluster import ray_session
from dutrain.tracking import stage_run

from .batch import Batch
from .checkpoint import latest_checkpoint, read_state, step_dir, write_state
from .groups import LearnerGroup, RolloutGroup, shared_placement_group
from .loss import group_advantages, token_weights
from .scoring import RewardFn, format_valid, reward_function
from .weight_sync import PendingSync, finish_sync, push_weights

COLUMNS = ("sample_id", "degraded", "annotation")


# ------------------------------------------------------------------------------------ prompts

@dataclass
class PromptSampler:
    """Epochs of seeded permutations over the train rows; (epoch, cursor) is the data position."""

    table: Any  # pyarrow.Table with COLUMNS
    seed: int
    epoch: int = 0
    cursor: int = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.table.num_rows)

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def next(self, k: int) -> Batch:
        rows: list[int] = []
        while len(rows) < k:
            order = self._order(self.epoch)
            take = order[self.cursor:self.cursor + k - len(rows)].tolist()
            rows += take
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return prompt_batch(self.table, rows)


def prompt_batch(table: Any, rows: list[int]) -> Batch:
    """Decoded prompts: the image and, for the reward, its reference annotation."""
    sub = table.take(rows).to_pylist()
    return Batch({"sample_id": [r["sample_id"] for r in sub],
                  "image": [decode_png(r["degraded"]) for r in sub],
                  "reference": [json.loads(r["annotation"]) for r in sub],
                  "prompt": list(range(len(sub)))})


@dataclass
class RunInputs:
    """What a run needs, resolved and checked before any actor starts."""

    model_dir: str
    train: Any
    heldout: Batch | None
    resume_from: str | None = None
    resume_state: dict[str, Any] = field(default_factory=dict)


def prepare(cfg: RLConfig) -> RunInputs:
    """Resolve the model, read the dataset and find the checkpoint; clear errors, no actors."""
    preflight.model("model", cfg.model, cfg.storage)
    preflight.dataset("dataset", cfg.dataset, cfg.storage)
    preflight.output_location("output", cfg.output, cfg.storage)
    preflight.tracking(cfg.tracking)
    try:
        model_dir = str(resolve_model(cfg.model, storage=cfg.storage))
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"bad value for 'model': {exc}") from None
    try:
        train = read_table(cfg.dataset, ["train"], COLUMNS, cfg.train_limit, cfg.storage)
    except FileNotFoundError as exc:
        raise ConfigError(f"bad value for 'dataset': {exc} (run `dutrain generate` "
                          f"first)") from None
    if train.num_rows < cfg.prompts_per_step:
        raise ConfigError(f"dataset '{cfg.dataset}' has {train.num_rows} train rows; "
                         f"'prompts_per_step' is {cfg.prompts_per_step}")
    heldout = None
    if cfg.eval_every:
        t = read_table(cfg.dataset, [cfg.eval_split], COLUMNS, cfg.eval_prompts, cfg.storage)
        if t.num_rows == 0:
            raise ConfigError(f"dataset '{cfg.dataset}' has no '{cfg.eval_split}' rows for the "
                             f"held-out prompts; set 'eval_split' to a split it has or "
                             f"'eval_every=0'")
        heldout = prompt_batch(t, list(range(t.num_rows)))
    inputs = RunInputs(model_dir, train, heldout)
    if cfg.resume:
        inputs.resume_from = latest_checkpoint(cfg.output, cfg.storage)
        if inputs.resume_from:
            inputs.resume_state = read_state(inputs.resume_from, cfg.storage)
    return inputs


# --------------------------------------------------------------------------------- scoring

def score_batch(batch: Batch, reward: RewardFn, cfg: RLConfig, grid_factor: int = 1
                ) -> tuple[Batch, dict[str, float]]:
    """Rewards, group advantages and token weights for a rollout batch (rows grouped by prompt);
    `grid_factor`: the policy's answer grid (format validity)."""
    t0 = time.perf_counter()
    scores = [reward(text, ref) for text, ref in zip(batch["text"], batch["reference"])]
    totals = np.array([s["total"] for s in scores]).reshape(-1, cfg.group_size)
    adv = group_advantages(totals, scale=cfg.loss.scale_rewards).reshape(-1)
    lengths = [len(ids) for ids in batch["completion_ids"]]
    weights = token_weights(lengths, cfg.loss.norm, len(batch), sum(lengths),
                            cfg.rollout.max_tokens)
    valid = [format_valid(t, grid_factor) for t in batch["text"]]
    out = batch.with_columns(reward=scores, advantage=adv.tolist(), token_weight=weights,
                             format_valid=valid)
    metrics: dict[str, float] = {}
    for comp in scores[0]:
        vals = np.array([s[comp] for s in scores])
        metrics[f"reward/{comp}"] = float(vals.mean())
        metrics[f"reward/{comp}_std"] = float(vals.std())
        metrics[f"reward/{comp}_p10"] = float(np.percentile(vals, 10))
        metrics[f"reward/{comp}_p90"] = float(np.percentile(vals, 90))
    metrics.update({
        "rl/format_valid": float(np.mean(valid)),
        "rl/completion_length": float(np.mean(lengths)),
        "rl/completion_length_max": float(np.max(lengths)),
        "rl/truncated_fraction": float(np.mean(batch["truncated"])),
        "rl/zero_std_groups": float(np.mean(totals.std(axis=1) == 0)),
        "rl/reward_seconds": time.perf_counter() - t0})
    return out, metrics


def heldout_metrics(batch: Batch, reward: RewardFn, split: str,
                    grid_factor: int = 1) -> dict[str, float]:
    scores = [reward(t, r) for t, r in zip(batch["text"], batch["reference"])]
    out = {f"{split}/reward/{c}": float(np.mean([s[c] for s in scores])) for c in scores[0]}
    out[f"{split}/format_valid"] = float(np.mean([format_valid(t, grid_factor)
                                                  for t in batch["text"]]))
    return out


def samples_jsonl(batch: Batch, step: int, k: int) -> str:
    rows = []
    for i in range(min(k, len(batch))):
        rows.append(json.dumps({"step": step, "sample_id": batch["sample_id"][i],
                                "version": batch.meta.get("version"),
                                "reference": batch["reference"][i], "completion": batch["text"][i],
                                "reward": batch["reward"][i], "advantage": batch["advantage"][i]}))
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------ controller

class Controller:
    """Builds the worker groups and runs the loop; `log(metrics, step)` receives every metric."""

    def __init__(self, cfg: RLConfig, inputs: RunInputs,
                 log: Callable[[dict[str, float], int], None] = lambda m, s: None,
                 log_text: Callable[[str, str], None] = lambda text, name: None):
        self.cfg, self.inputs, self.log, self.log_text = cfg, inputs, log, log_text
        # the policy answers on its model's grid (dutrain_prompt.json; 1 for a plain model)
        self.grid_factor = answer_grid(inputs.model_dir)
        self.reward = reward_function(cfg.reward.kind, cfg.reward.weights.as_dict(),
                                      cfg.reward.target_type, self.grid_factor)
        state = inputs.resume_state
        pos = state.get("data", {"epoch": 0, "cursor": 0})
        self.sampler = PromptSampler(inputs.train, cfg.seed, pos["epoch"], pos["cursor"])
        self.step = int(state.get("step", 0))
        self.version = int(state.get("version", 0))
        self.history: list[dict[str, float]] = []
        self.learners: Any = None
        self.rollouts: Any = None
        self._shared_pg: Any = None
        #: rollout batches in flight: (step, data position before its prompts, refs)
        self._ahead: deque[tuple[int, dict[str, int], list[Any]]] = deque()
        self._pending_push: PendingSync | None = None

    # ------------------------------------------------------------------------------ actors
    def start(self) -> None:
        t0 = time.perf_counter()
        if self.cfg.placement == "colocated":
            self._shared_pg = shared_placement_group(self.cfg)
        self.rollouts = RolloutGroup(self.cfg, self.inputs.model_dir, self._shared_pg)
        self.learners = LearnerGroup(self.cfg, self.inputs.model_dir, self.inputs.resume_from,
                                     self._shared_pg)
        if self.inputs.resume_from:  # engines start from the base model: give them the policy
            self.push_policy()
            self.finish_push()
        self.startup_seconds = time.perf_counter() - t0

    def shutdown(self) -> None:
        for g in (self.rollouts, self.learners):
            if g is not None:
                g.shutdown()
        if self._shared_pg is not None:
            ray.util.remove_placement_group(self._shared_pg)

    # -------------------------------------------------------------------------------- loop
    def sample_seed(self, step: int) -> int:
        return (self.cfg.seed * 1_000_003 + step) % 2**31

    def evaluate(self) -> dict[str, float]:
        """Completions on the fixed held-out prompts (greedy, or samples of the policy with fixed
        seeds), scored with the run's reward."""
        if self.inputs.heldout is None:
            return {}
        greedy = self.cfg.eval_sampling == "greedy"
        batch = self.rollouts.generate(self.inputs.heldout, n=1 if greedy else self.cfg.group_size,
                                       seed=0, greedy=greedy)
        return heldout_metrics(batch, self.reward, self.cfg.eval_split, self.grid_factor)

    def fit(self) -> list[dict[str, float]]:
        """Run until `cfg.steps`; returns the per-step metrics."""
        cfg = self.cfg
        if cfg.eval_every and self.step == 0:
            self.log(self.evaluate(), 0)
        for s in range(self.step, min(cfg.steps, self.step + cfg.staleness_bound)):
            self._submit(s)
        while self.step < cfg.steps:
            metrics = self.train_step()
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                metrics.update(self.finish_push())  # score the policy just trained
                metrics.update(self.evaluate())
            self.log(metrics, self.step)
            self.history.append(metrics)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) \
                    or self.step == cfg.steps:
                self.save_checkpoint(self._ahead[0][1] if self._ahead
                                     else self.sampler.position())
        self.finish_push()
        return self.history

    def train_step(self) -> dict[str, float]:
        """One step: the rollout batch, rewards, the learner's update and the weight push."""
        cfg = self.cfg
        t_step = time.perf_counter()
        step, batch, rollout_wait = self._next_rollouts(t_step)
        staleness = self._check_staleness(step, batch)
        batch, metrics = score_batch(batch, self.reward, cfg, self.grid_factor)
        batch.meta["step"] = step
        t_learn = time.perf_counter()
        stats = self.learners.train(batch)
        metrics["rl/learner_wait_seconds"] = time.perf_counter() - t_learn
        self.version += 1
        metrics.update(self.push_policy())
        metrics.update(stats)
        gen_s = batch.meta["generate_seconds"]
        metrics.update({
            "rl/staleness": float(staleness), "rl/policy_version": float(self.version),
            "rl/rollout_seconds": gen_s, "rl/rollout_wait_seconds": rollout_wait,
            "rl/rollout_tokens_per_s": batch.meta["tokens"] / gen_s if gen_s > 0 else 0.0,
            "rl/rollout_actors_replaced": float(self.rollouts.replaced),
            "rl/step_seconds": time.perf_counter() - t_step})
        self.step = step + 1
        if cfg.samples_to_log:
            self.log_text(samples_jsonl(batch, step, cfg.samples_to_log),
                          f"samples/step_{step:06d}.jsonl")
        return metrics

    # --------------------------------------------------------------------------- rollouts
    def _submit(self, step: int) -> None:
        """Start generating the batch of `step` from the next prompts (kept in `_ahead` with
        the data position it starts at)."""
        pos = self.sampler.position()
        prompts = self.sampler.next(self.cfg.prompts_per_step)
        self._ahead.append((step, pos, self.rollouts.async_generate(
            prompts, self.cfg.group_size, self.sample_seed(step))))

    def _next_rollouts(self, t_step: float) -> tuple[int, Batch, float]:
        """(step, batch, seconds waited): the oldest batch in flight, or in sync mode one
        generated now with the weights just pushed. In async mode the batch `staleness_bound`
        steps ahead is submitted next, to generate while the learner trains."""
        cfg = self.cfg
        if not self._ahead:
            self._submit(self.step)
        step, _, refs = self._ahead.popleft()
        batch = self.rollouts.gather(refs, cfg.group_size, self.sample_seed(step))
        rollout_wait = time.perf_counter() - t_step
        if cfg.staleness_bound and step + cfg.staleness_bound < cfg.steps:
            self._submit(step + cfg.staleness_bound)
        return step, batch, rollout_wait

    def _check_staleness(self, step: int, batch: Batch) -> int:
        bound = self.cfg.staleness_bound
        staleness = self.version - batch.meta["version"]
        if staleness > bound:
            raise RuntimeError(f"step {step}: batch from policy version "
                               f"{batch.meta['version']} is {staleness} versions behind the "
                               f"learner (bound {bound})")
        return staleness

    # ------------------------------------------------------------------------- weight push
    def push_policy(self) -> dict[str, float]:
        """Push the learner's weights (policy `self.version`) to every engine: the one place a
        push starts. Async mode first waits for the previous push (long finished, or queued
        behind the generation in flight) and leaves this one pending; sync mode waits for it.
        Returns the timings of the push waited for (`rl/sync_...`)."""
        metrics = self.finish_push()
        self._pending_push = push_weights(self.learners, self.rollouts, self.version)
        if self.cfg.staleness_bound == 0:
            metrics.update(self.finish_push())
        return metrics

    def finish_push(self) -> dict[str, float]:
        """Wait for the pending push, if any; its timings (empty when none was pending)."""
        if self._pending_push is None:
            return {}
        pending, self._pending_push = self._pending_push, None
        return finish_sync(self.rollouts, pending)

    # -------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, data_position: dict[str, int]) -> str:
        """Weights (HF), optimiser, step, version and the data position of the next step."""
        uri = step_dir(self.cfg.output, self.step)
        ray.get(self.learners.actors[0].save.remote(uri))
        write_state(uri, {"step": self.step, "version": self.version, "data": data_position,
                          "seed": self.cfg.seed}, self.cfg.storage)
        return uri

    def save_final(self) -> str:
        """The policy as an HF directory at `output`/final (what `dutrain eval` takes)."""
        uri = join(self.cfg.output, "final")
        return ray.get(self.learners.actors[0].save.remote(uri, False))


def run(cfg: RLConfig) -> int:
    """`dutrain rl`: validate, start the actor group, train, track, checkpoint."""
    inputs = prepare(cfg)  # a UserError here is found before any actor started
    if cfg.resume and inputs.resume_from is None:
        print(f"rl: no checkpoint under '{cfg.output}', starting from '{cfg.model}'")
    with ray_session(cfg.ray), stage_run(cfg, "rl") as tracker, tqdm(
            total=cfg.steps, desc="rl", unit="step", file=sys.stderr, disable=not cfg.progress,
            dynamic_ncols=True) as bar:
        def log(metrics: dict[str, float], step: int) -> None:
            tracker.log_metrics(metrics, step=step)
            bar.update(max(0, step - bar.n))
            shown = {label: f"{metrics[k]:.3g}" for k, label in (
                ("reward/total", "reward"), (f"{cfg.eval_split}/reward/total", cfg.eval_split),
                ("rl/step_seconds", "s/step")) if k in metrics}
            if shown:
                bar.set_postfix(shown)

        ctl = Controller(cfg, inputs, log=log, log_text=tracker.log_text)
        try:
            ctl.start()
            tracker.set_tags({"rl.learner_params": ctl.learners.num_params,
                              "rl.resumed_from": inputs.resume_from or ""})
            tracker.log_metrics({"rl/startup_seconds": ctl.startup_seconds}, step=ctl.step)
            history = ctl.fit()
            final = ctl.save_final()
        finally:
            ctl.shutdown()
    last = history[-1] if history else {}
    keys = [k for k in ("reward/total", "rl/kl", "rl/entropy", "rl/step_seconds",
                        f"{cfg.eval_split}/reward/total") if k in last]
    print(json.dumps({"steps": ctl.step, "final_model": final,
                      **{k: round(last[k], 4) for k in keys}}))
    return 0
