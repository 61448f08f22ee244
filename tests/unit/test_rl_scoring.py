"""Controller-side pieces of an RL step: prompt order, rewards → advantages → token weights."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
from PIL import Image

from dutrain.config import load_config
from dutrain.config.rl import RLConfig
from dutrain.rl.batch import Batch
from dutrain.rl.controller import PromptSampler, score_batch
from dutrain.rl.scoring import reward_function, type_mention_reward

HAZE = {"degradations": [{"type": "haze", "params": {"beta": 1.2, "airlight": 0.8}}]}
GOOD = ('<think>dark channel high</think>\n<answer>{"degradations": [{"type": "haze", '
        '"params": {"beta": 1.2, "airlight": 0.8}}]}</answer>')


def _table(n: int) -> pa.Table:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return pa.table({"sample_id": [f"s{i:03d}" for i in range(n)],
                     "degraded": [buf.getvalue()] * n,
                     "annotation": [json.dumps(HAZE)] * n})


def test_sampler_covers_each_epoch_and_resumes_from_its_position():
    s = PromptSampler(_table(10), seed=3)
    first = s.next(4)["sample_id"] + s.next(4)["sample_id"]
    pos = s.position()
    rest = s.next(4)["sample_id"]  # crosses into epoch 1
    assert sorted(first + rest[:2]) == [f"s{i:03d}" for i in range(10)]
    assert s.position() == {"epoch": 1, "cursor": 2}
    again = PromptSampler(_table(10), seed=3, **pos)
    assert again.next(4)["sample_id"] == rest


def test_structured_reward_and_toy_reward():
    r = reward_function("structured")
    assert r(GOOD, HAZE)["total"] == 1.0 and r("garbage", HAZE)["total"] == 0.0
    assert type_mention_reward("some haze here", "haze") == {"total": 1.0}
    assert reward_function("type_mention", target_type="rain")("haze", HAZE)["total"] == 0.0


def test_score_batch_groups_advantages_and_token_weights():
    cfg = load_config(RLConfig, overrides=["group_size=2", "prompts_per_step=2",
                                           "loss.norm=grpo", "learner.workers=1"])
    texts = [GOOD, "nothing", "nothing", "nothing"]
    b = Batch({"text": texts, "reference": [HAZE] * 4, "completion_ids": [[1] * 5, [1] * 3,
                                                                          [1] * 2, [1] * 4],
               "truncated": [False, False, True, False]})
    out, m = score_batch(b, reward_function("structured"), cfg)
    assert out["advantage"][0] > 0 > out["advantage"][1]
    assert out["advantage"][2:] == [0.0, 0.0]  # a group where all scored 0 carries no signal
    assert out["format_valid"] == [True, False, False, False]
    assert np.isclose(sum(w * len(c) for w, c in zip(out["token_weight"], b["completion_ids"])), 1)
    assert m["reward/total"] == 0.25 and m["rl/format_valid"] == 0.25
    assert m["rl/zero_std_groups"] == 0.5 and m["rl/truncated_fraction"] == 0.25
    assert {"reward/format", "reward/type", "reward/key", "reward/value"} <= set(m)
