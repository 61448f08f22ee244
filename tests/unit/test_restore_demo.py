"""`make demo`'s restore stage runs the controlled plan and the pipeline's summary shows its
figures (issue 17): identity, oracle, plain ('predicted') and controlled PSNR and the share
worse than identity."""

from __future__ import annotations

import json
from pathlib import Path

from dutrain.config import load_config
from dutrain.config.pipeline import PipelineConfig
from dutrain.pipeline import _summary, plan

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_restore_stage_is_controlled(tmp_path):
    cfg = load_config(PipelineConfig, ROOT / "workflows/configs/pipeline/demo.yaml", overrides=[
        f"workdir={tmp_path}", "tracking.enabled=false", "stages=[restore]",
        f"stage_configs.restore={ROOT / 'workflows/configs/restore/demo.yaml'}"])
    job = {j.label: j for j in plan(cfg)}["restore"]
    r = job.config
    assert r.restore.plan == "controlled" and r.split == "test"
    assert r.model == str(tmp_path / "sft" / "final")  # rl not listed here: sft's model
    assert r.restore.max_alternatives >= 1 and r.restore.calibration_limit <= 300


def test_pipeline_summary_shows_the_controlled_figures(tmp_path):
    cfg = load_config(PipelineConfig, overrides=[f"workdir={tmp_path}", "tracking.enabled=false"])
    (tmp_path / "restore").mkdir()
    (tmp_path / "restore" / "metrics.json").write_text(json.dumps({
        "test/psnr/identity": 29.4, "test/psnr/oracle": 40.8, "test/psnr/predicted": 26.5,
        "test/psnr/controlled": 27.2, "test/psnr/controlled/haze": 19.4,
        "test/worse_than_identity": 0.185, "test/worse_than_identity/predicted": 0.333}))
    text = _summary(cfg, {})
    line = [ln for ln in text.splitlines() if ln.startswith("restoration PSNR")][0]
    for k in ("identity 29.40", "oracle 40.80", "predicted 26.50", "controlled 27.20"):
        assert f"test/psnr/{k}" in line
    assert "haze" not in line
    assert ("worse than identity by > 0.5 dB: test/worse_than_identity 18.5%, "
            "test/worse_than_identity/predicted 33.3%") in text
