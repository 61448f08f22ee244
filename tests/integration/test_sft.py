"""`dutrain sft` on Ray Train with 2 CPU workers (gloo) and the tiny model, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.config.sft import SFTConfig
from dutrain.data.generate import generate
from dutrain.io.dataset import iter_samples
from dutrain.models import encode_prompts, load_model, load_processor
from dutrain.sft.run import run


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-data") / "ds"
    generate(load_config(GenerateConfig, overrides=[
        f"output={root}", "image_size=64", "samples=320", "rows_per_shard=80", "progress=false",
        "tracking.enabled=false", "ood_fraction=0"]))
    return str(root)


def sft_config(data: str, out: Path, *overrides: str, tracking: str | None = None) -> SFTConfig:
    track = [f"tracking.uri={tracking}", "tracking.experiment=sft-tests"] if tracking \
        else ["tracking.enabled=false"]
    return load_config(SFTConfig, overrides=[
        f"dataset={data}", f"output={out}", "num_workers=2", "batch_size=8", "lr=3e-3",
        "warmup_steps=2", "val_samples=16", "final_eval_samples=0", *track, *overrides])


def _run_of(uri: str, output: Path):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("sft-tests")
    runs = [r for r in c.search_runs([exp.experiment_id])
            if r.data.tags.get("dutrain.output") == str(output)]
    return c, runs


def test_two_workers_loss_falls_checkpoints_load_and_run_is_tracked(data, tmp_path, mlflow_server,
                                                                    capfd):
    out = tmp_path / "sft"
    cfg = sft_config(data, out, "max_steps=30", "log_every=5", "eval_every=15",
                     "checkpoint_every=15", "keep_checkpoints=1", "final_eval_samples=8",
                     "sample_completions=2", "max_new_tokens=48", tracking=mlflow_server)
    assert run(cfg) == 0
    # rank 0's steps reach the driver's progress bar (workers themselves do not print)
    err = capfd.readouterr().err
    assert "sft: 100%" in err and "30/30" in err and "train_loss=" in err, err[-2000:]
    assert "val_loss=" in err, err[-2000:]

    c, runs = _run_of(mlflow_server, out)
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["dutrain.stage"] == "sft"
    assert r.data.tags["dutrain.checkpoint"] == f"{out}/final"
    loss = [m.value for m in sorted(c.get_metric_history(r.info.run_id, "train/loss"),
                                    key=lambda m: m.step)]
    assert len(loss) == 6 and loss[-1] < 0.7 * loss[0], loss
    val = sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, "val/loss"))
    assert [s for s, _ in val] == [15, 30] and val[1][1] < val[0][1]
    for key in ("train/lr", "train/tokens_per_s", "train/samples_per_s", "val/format_valid",
                "val/type_f1"):
        assert key in r.data.metrics, key
    assert r.data.params["model"] == "tiny" and r.data.params["num_workers"] == "2"
    arts = {a.path for a in c.list_artifacts(r.info.run_id, "samples")}
    assert "samples/completions.jsonl" in arts and sum(p.endswith(".png") for p in arts) == 2

    # last K=1 Ray checkpoints kept, each an HF model plus the trainer state
    ckpts = sorted(p for p in (out / "train").glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 1
    assert {"model.safetensors", "config.json", "trainer_state.pt",
            "tokenizer.json"} <= {p.name for p in ckpts[0].iterdir()}
    best = json.loads((out / "best" / "dutrain_sft.json").read_text())
    assert best["step"] == 30 and best["val_loss"] == pytest.approx(val[1][1], rel=1e-6)
    assert json.loads((out / "final" / "eval.json").read_text())["val/n"] == 8

    # the final model loads with transformers and answers a test image
    sample = next(iter_samples(data, ["test"], limit=1))
    proc, model = load_processor(out / "final"), load_model(out / "final")
    p = encode_prompts(proc, [sample.degraded])
    g = model.generate(**p, max_new_tokens=8, do_sample=False)
    assert proc.tokenizer.decode(g[0, p["input_ids"].shape[1]:]).startswith("<think>")
    # and so does the Ray checkpoint directory
    assert load_model(ckpts[0]) is not None


def _losses(db: str, output: Path, key: str = "train/loss") -> dict[int, float]:
    c = MlflowClient(db)
    exp = c.get_experiment_by_name("sft-tests")
    out: dict[int, float] = {}
    for r in c.search_runs([exp.experiment_id]):
        if r.data.tags.get("dutrain.output") == str(output):
            out.update({m.step: m.value for m in c.get_metric_history(r.info.run_id, key)})
    return out


def test_resumed_run_matches_the_uninterrupted_one(data, tmp_path):
    """With the auxiliary perception loss on: its head is part of the trainer state, so the
    resumed run replays the uninterrupted one; the saved model is an ordinary checkpoint."""
    n = 4
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"max_steps={2 * n}", "log_every=1", "eval_every=100", f"checkpoint_every={n}",
              "aux_loss=0.5"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    run(sft_config(data, full, *common, tracking=db))
    run(sft_config(data, parts, *common, f"stop_at_step={n}", tracking=db))
    assert not (parts / "final").exists()  # stopped, not finished
    run(sft_config(data, parts, *common, tracking=db))  # resume=true is the default
    a, b = _losses(db, full), _losses(db, parts)
    assert sorted(a) == sorted(b) == list(range(1, 2 * n + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
    assert (parts / "final" / "model.safetensors").is_file()
    aux = _losses(db, full, "train/aux_loss")
    assert sorted(aux) == list(range(1, 2 * n + 1)) and all(v > 0 for v in aux.values())
    assert "aux_head" in torch.load(next((parts / "train").glob("checkpoint_*")) /
                                    "trainer_state.pt", weights_only=True)
    assert not any("aux" in k for k in load_model(parts / "final").state_dict())


def test_bad_config_fails_before_any_work():
    from dutrain.config import ConfigError
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(SFTConfig, overrides=["max_steps=10", "warmup_steps=10"])
    with pytest.raises(ConfigError, match="mrope_section"):
        load_config(SFTConfig, overrides=["tiny.mrope_section=[2,2,2]"])
    with pytest.raises(ConfigError, match="target"):
        load_config(SFTConfig, overrides=["target=json"])
