"""`dutrain offline` resume decisions without a model: the samples under output/samples are
reused only when their manifest equals this run's sampling key and every prompt has K samples;
the step counts the progress bars and the RFT schedule use."""

from __future__ import annotations

import json

from dutrain.config import load_config
from dutrain.config.offline import OfflineConfig
from dutrain.offline.run import (
    MANIFEST,
    dpo_steps,
    reusable_samples,
    rft_steps,
    sampling_key,
    write_parquet,
)


def _write(out, key, samples):
    write_parquet(samples, out / "samples" / "samples.parquet")
    (out / "samples" / MANIFEST).write_text(json.dumps(key))


def test_samples_are_reused_only_when_complete_and_sampled_the_same_way(tmp_path):
    cfg = load_config(OfflineConfig, overrides=["samples_per_prompt=2", f"dataset={tmp_path}"])
    rows = [{"sample_id": "a"}, {"sample_id": "b"}]
    key = sampling_key(cfg, rows)
    samples = [{"prompt_id": p, "sample_index": j, "completion": f"{p}{j}", "total": 0.5}
               for p in "ab" for j in range(2)]
    out = tmp_path / "out"
    assert reusable_samples(str(out), key, None) is None  # nothing there yet
    _write(out, key, samples)
    assert reusable_samples(str(out), key, None) == samples
    # another temperature, another K or other prompts: sample again
    hot = sampling_key(load_config(OfflineConfig, overrides=[
        "samples_per_prompt=2", f"dataset={tmp_path}", "generation.temperature=0.7"]), rows)
    assert reusable_samples(str(out), hot, None) is None
    assert reusable_samples(str(out), sampling_key(cfg, rows[:1]), None) is None
    # a Parquet short of K samples for every prompt is not complete
    _write(out, key, samples[:3])
    assert reusable_samples(str(out), key, None) is None


def test_step_counts():
    cfg = load_config(OfflineConfig, overrides=["batch_size=4", "epochs=2"])
    assert dpo_steps(cfg, 12) == 6 and dpo_steps(cfg, 13) == 8  # the last batch partial
    assert rft_steps(cfg, 13) == 6  # whole batches only (the SFT loop's epochs)
    two = load_config(OfflineConfig, overrides=["batch_size=4", "num_workers=2"])
    assert dpo_steps(two, 12) == 2 and rft_steps(two, 12) == 1
    assert dpo_steps(load_config(OfflineConfig, overrides=["max_steps=5"]), 100) == 5
