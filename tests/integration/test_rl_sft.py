"""From the SFT demo checkpoint, a short RL run on the structured rewards (issue 5).

Starts from the session's CI-sized demo SFT run (fixture `demo_sft`, tests/conftest.py) with the
RL demo YAML and checks what RL from a real SFT model must do at any size: every step samples,
scores with the §6 rewards, updates the learners (a non-zero gradient) and pushes the weights to
the rollout engine (policy version = step), the held-out evaluation runs before the first and
after the last step, and the answers stay in the format (held-out format validity of the
samples at least 0.5 before and not more than 0.15 lower after).

What it no longer asserts, measured: that the held-out reward *rises*. It did at an earlier CI
size (0.236 → 0.404 in 40 steps at lr 2e-4), then stopped once the non-photo built-ins became
train-only (session 7: 0.328 → 0.307), and at demo size RL after SFT is flat too (docs/rl.md,
docs/offline.md: type accuracy 0.537 → 0.526 / 0.531 over two seeds). The claim lives in those
measurements, not in a test that could only be marked as expected to fail. The held-out rewards
are printed for the record. 12 steps (was 40) keep the CI time for what is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dutrain.config import load_config
from dutrain.config.rl import RLConfig

ROOT = Path(__file__).resolve().parents[2]
STEPS, PROMPTS, LR, KL = 12, 32, 2e-4, 0.02


@pytest.mark.slow
def test_rl_from_sft_steps_syncs_and_keeps_the_format(demo_sft, tmp_path):
    from dutrain.rl.controller import Controller, prepare

    cfg = load_config(RLConfig, ROOT / "workflows/configs/rl/demo.yaml", [
        f"model={demo_sft.model}", f"dataset={demo_sft.data}", f"output={tmp_path}",
        f"steps={STEPS}", f"eval_every={STEPS}", f"eval_prompts={PROMPTS}", f"learner.lr={LR}",
        f"loss.kl_coef={KL}", "checkpoint_every=0", "tracking.enabled=false"])
    logged: list[dict[str, float]] = []
    ctl = Controller(cfg, prepare(cfg), log=lambda m, step: logged.append(m))
    try:
        ctl.start()
        ctl.fit()
    finally:
        ctl.shutdown()
    steps = [m for m in logged if "rl/grad_norm" in m]
    assert len(steps) == STEPS
    assert all(m["rl/grad_norm"] > 0 and 0 <= m["reward/total"] <= 1 for m in steps)
    assert [int(m["rl/policy_version"]) for m in steps][-1] == STEPS  # every update pushed
    split = cfg.eval_split
    heldout = [m for m in logged if f"{split}/reward/total" in m]
    print(f"held-out {split}/reward/total: {[m[f'{split}/reward/total'] for m in heldout]}")
    assert len(heldout) == 2
    before, after = (m[f"{split}/format_valid"] for m in heldout)
    print(f"held-out {split}/format_valid: {before} -> {after}")
    assert before >= 0.5  # the SFT model's samples (T = 0.6) are mostly in the format
    assert after >= before - 0.15  # and RL did not break it
