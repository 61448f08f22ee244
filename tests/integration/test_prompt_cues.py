"""`prompt: cues` and `grid_factor` end to end: a few SFT steps save the mode and the answer grid
with the model, and `dutrain eval` of that model reads both back (its engine prompts with each
image's measured cues, its grammar allows only the coarse grid) and scores on that grid."""

from __future__ import annotations

import json

from test_eval_data import write_dataset

from dutrain.cli import main
from dutrain.config import load_config
from dutrain.config.sft import SFTConfig
from dutrain.models import PROMPT_FILE, answer_grid, prompt_mode
from dutrain.sft.run import run

GEN = ["generation.structured=true", "generation.max_tokens=64", "generation.batch_size=8",
       "generation.temperature=1.0", "generation.seed=0"]


def test_sft_with_cues_on_a_coarse_grid_saves_both_and_eval_reads_them(tmp_path, ray_local,
                                                                        capsys):
    root = write_dataset(tmp_path / "ds", {"train": 12, "val": 4, "test": 4}, size=64, seed=3)
    out = tmp_path / "sft"
    cfg = load_config(SFTConfig, overrides=[
        f"dataset={root}", f"output={out}", "prompt=cues", "grid_factor=4", "num_workers=1",
        "batch_size=4",
        "max_steps=3", "warmup_steps=1", "val_samples=4", "eval_every=3", "checkpoint_every=3",
        "final_eval_samples=2", "sample_completions=0", "max_new_tokens=16", "progress=false",
        "tracking.enabled=false"])
    assert run(cfg) == 0
    ckpts = [p for p in (out / "train").glob("checkpoint_*") if p.is_dir()]
    assert ckpts
    for d in (out / "final", out / "best", *ckpts):
        assert json.loads((d / PROMPT_FILE).read_text()) == {"prompt": "cues", "grid_factor": 4}
        assert prompt_mode(d) == "cues" and answer_grid(d) == 4
    assert "val/format_valid" in json.loads((out / "final" / "eval.json").read_text())

    ev = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", f"dataset={root}", f"model={out / 'final'}", f"output={ev}",
                 "splits=[test]", "tracking.enabled=false", "plots=false", *GEN]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert "test/format_valid" in metrics and metrics["eval/samples_per_s"] > 0
    note = "prompt: cues (the model's dutrain_prompt.json)"
    assert note in (ev / "report.md").read_text() and note in capsys.readouterr().out
    assert "answer grid: factor 4" in (ev / "report.md").read_text()
    assert len((ev / "completions.jsonl").read_text().splitlines()) == 4
