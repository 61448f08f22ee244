"""The CI-sized demo run shared by the learning tests (SFT learns every type; RL improves on it).

One `dutrain generate` + `dutrain sft` with the demo YAMLs, scaled down (fewer rows and steps),
built once per session: minutes of 2-core CPU that the SFT and RL learning tests
both need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# CI size: the demo's 128-px single-degradation data with a fifth of the rows, 400 steps of
# batch 8 per worker (the demo: 12,000 rows, 1,500 steps of 16).
DEMO_SFT_OVERRIDES = ["max_steps=400", "warmup_steps=20", "batch_size=8", "eval_every=400",
                      "checkpoint_every=400", "final_eval_samples=0", "val_samples=16",
                      "progress=false"]
DEMO_GENERATE_OVERRIDES = ["samples=2400", "ood_fraction=0"]


@dataclass(frozen=True)
class DemoRun:
    data: Path
    model: Path  # the SFT stage's final/ (an ordinary HF checkpoint)
    cfg: object  # the SFTConfig it was trained with


@pytest.fixture(scope="session")
def demo_sft(ray_local, tmp_path_factory, project_root) -> DemoRun:
    from dutrain.config import load_config
    from dutrain.config.generate import GenerateConfig
    from dutrain.config.sft import SFTConfig
    from dutrain.data.generate import generate
    from dutrain.sft.run import run

    root = tmp_path_factory.mktemp("demo")
    data = root / "data"
    generate(load_config(GenerateConfig, project_root / "workflows/configs/generate/demo.yaml",
                         overrides=[f"output={data}", "progress=false", "tracking.enabled=false",
                                    *DEMO_GENERATE_OVERRIDES]))
    cfg = load_config(SFTConfig, project_root / "workflows/configs/sft/demo.yaml", overrides=[
        f"dataset={data}", f"output={root / 'sft'}", "tracking.enabled=false",
        *DEMO_SFT_OVERRIDES])
    assert run(cfg) == 0
    return DemoRun(data=data, model=root / "sft" / "final", cfg=cfg)
