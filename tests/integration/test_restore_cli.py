"""`dutrain restore` end to end: a folder with given annotations, a dataset split with predicted
annotations (classical baseline) logged to a real MLflow server, and a folder whose annotations
the tiny VLM predicts through the shared vLLM engine wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data
from test_eval_data import write_dataset

from dutrain.cli import main
from dutrain.degrade import apply_chain
from dutrain.io.dataset import iter_samples

BLUR = {"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.5}}]}
JPEG = {"degradations": [{"type": "jpeg", "params": {"quality": 25}}]}


def _folder(tmp_path, n=3, size=64):
    src = data.astronaut()
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        crop = np.ascontiguousarray(src[40 * i:40 * i + size, 100:100 + size])
        Image.fromarray(apply_chain(crop, BLUR if i % 2 == 0 else JPEG, i)).save(d / f"im{i}.png")
    return d


def test_folder_with_an_annotation_file_per_image(tmp_path):
    imgs = _folder(tmp_path)
    lines = [{"image": "im0.png", "annotation": BLUR},
             {"image": "im1",
              "completion": f"<think>blocks</think>\n<answer>{json.dumps(JPEG)}</answer>"},
             {"image": "im2.png", "annotation": json.dumps(BLUR)}]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    assert main(["restore", f"input={imgs}", f"annotation={ann}", f"output={out}",
                 "tracking.enabled=false"]) == 0
    assert sorted(p.name for p in (out / "restored").iterdir()) == ["im0.png", "im1.png", "im2.png"]
    rows = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
    assert [r["predicted"] for r in rows] == [BLUR, JPEG, BLUR]
    restored = np.asarray(Image.open(out / "restored" / "im0.png"))
    degraded = np.asarray(Image.open(imgs / "im0.png"))
    assert restored.shape == degraded.shape and not np.array_equal(restored, degraded)
    assert Image.open(out / "grid.png").size == (2 * 100, 14 + 3 * (100 + 14))


def test_bad_annotation_file_is_reported(tmp_path, capsys):
    imgs = _folder(tmp_path, n=1)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"image": "im0.png", "annotation": {"degradations": [
        {"type": "gaussian_blur", "params": {"sigma": 9.9}}]}}) + "\n")
    assert main(["restore", f"input={imgs}", f"annotation={ann}", f"output={tmp_path / 'o'}",
                 "tracking.enabled=false"]) == 2
    assert "ann.jsonl:1: bad annotation" in capsys.readouterr().err


def test_dataset_split_with_the_classical_baseline_logs_to_mlflow(tmp_path, mlflow_server):
    from mlflow import MlflowClient
    probs = {"gaussian_blur": 1, "low_light": 1, "haze": 1, "gaussian_noise": 1}
    root = write_dataset(tmp_path / "ds", {"train": 40, "val": 8, "test": 8}, size=64, seed=3,
                         type_probs=probs, max_degradations=1, clean_fraction=0.0)
    out = tmp_path / "out"
    assert main(["restore", f"input={root}", "split=test", "model=baseline:classical",
                 f"output={out}", f"tracking.uri={mlflow_server}", "restore.plan=controlled",
                 "tracking.experiment=restore-test", "calibration_samples=40"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for metric in ("psnr", "ssim"):
        for kind in ("identity", "oracle", "predicted"):
            assert f"test/{metric}/{kind}" in m
    # the true physics restores: on single degradations of these types the oracle always gains
    assert m["test/psnr/oracle"] > m["test/psnr/identity"] + 3
    assert m["test/ssim/oracle"] > m["test/ssim/identity"]
    types = {t for s in iter_samples(str(root), ["test"]) for t in
             [d["type"] for d in s.annotation["degradations"]]}
    assert {k.rsplit("/", 1)[1] for k in m if k.startswith("test/psnr/oracle/")} == types
    assert "| type | n | PSNR identity |" in (out / "report.md").read_text()
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("restore-test")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.data.tags["dutrain.stage"] == "restore"
    assert run.data.params["model"] == "baseline:classical"
    assert run.data.metrics["test/psnr/oracle"] == m["test/psnr/oracle"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"grid.png", "metrics.json", "report.md", "annotations.jsonl", "thresholds.json",
            "judge.json", "controller.jsonl", "risk_coverage.json", "risk_coverage.png"} <= arts
    assert run.data.metrics["test/psnr/controlled"] == m["test/psnr/controlled"]


def test_folder_with_annotations_predicted_by_the_tiny_vlm(tmp_path, ray_local):
    imgs = _folder(tmp_path, n=2, size=56)
    out = tmp_path / "out"
    # the random tiny model loops inside <think> greedily; seeded sampling under the answer
    # grammar ends in valid answers (as in the eval tests)
    assert main(["restore", f"input={imgs}", "model=tiny", f"output={out}",
                 "tracking.enabled=false", "generation.structured=true",
                 "generation.max_tokens=200", "generation.temperature=1.0",
                 "generation.seed=0"]) == 0
    rows = [json.loads(x) for x in (out / "annotations.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["completion"] for r in rows)
    assert any(r["predicted"] is not None for r in rows)
    assert (out / "grid.png").is_file()
    assert len(list((out / "restored").iterdir())) == 2


def test_controlled_plan_with_the_classical_baseline(tmp_path, monkeypatch):
    """restore.plan=controlled: thresholds calibrated on val, stored, reloaded; never much worse
    than doing nothing, with its metrics beside the plain plan's; the judge's records cached."""
    monkeypatch.setenv("DUTRAIN_CACHE", str(tmp_path / "cache"))
    probs = {"gaussian_blur": 1, "low_light": 1, "haze": 1, "gaussian_noise": 1}
    root = write_dataset(tmp_path / "ds", {"train": 40, "val": 16, "test": 8}, size=64, seed=3,
                         type_probs=probs, max_degradations=1, clean_fraction=0.1)
    out = tmp_path / "out"
    assert main(["restore", f"input={root}", "split=test", "model=baseline:classical",
                 "restore.plan=controlled", f"output={out}", "tracking.enabled=false",
                 "calibration_samples=40", "restore.diagnose=true"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test/psnr/controlled", "test/ssim/controlled", "test/worse_than_identity",
                "test/psnr/predicted", "restore/controlled/seconds_per_image",
                "restore/model_calls_per_image", "restore/controlled/alternatives_per_image",
                "restore/controlled/predict_seconds_per_image",
                "test/psnr/oracle_type", "test/psnr/oracle_values", "test/gap/values",
                "test/gap/type", "test/gap/operator", "test/oracle_type/values_filled"):
        assert key in m, key
    types = {t for s in iter_samples(str(root), ["test"]) for t in
             [d["type"] for d in s.annotation["degradations"]]}
    for kind in ("oracle_type", "oracle_values"):
        assert {k.rsplit("/", 1)[1] for k in m if k.startswith(f"test/psnr/{kind}/")} >= types
    assert m["restore/model_calls_per_image"] == 1.0
    curves = json.loads((out / "risk_coverage.json").read_text())
    assert curves["n"] == 8 and len(curves["plain_by_confidence"]) == len(curves["shares"])
    assert curves["controller"]["gain"] == pytest.approx(
        m["test/psnr/controlled"] - m["test/psnr/identity"], abs=1e-6)
    assert (out / "risk_coverage.png").stat().st_size > 1000
    assert any(k.startswith("test/psnr/controlled/") for k in m)
    assert m["test/psnr/controlled"] >= m["test/psnr/identity"] - 0.5
    th = json.loads((out / "thresholds.json").read_text())
    assert th["score"] == "classical_presence_margin" and "val" in th["source"]
    rows = [json.loads(x) for x in (out / "controller.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all("steps" in r for r in rows)
    report = (out / "report.md").read_text()
    assert "PSNR controlled" in report and "| share touched |" in report
    assert "## Gap to the oracle" in report and "| oracle_type |" in report
    # the judge learnt from every train row (40 < restore.judge_rows) and checked the steps
    judge = json.loads((out / "judge.json").read_text())
    assert "train (40 rows)" in judge["source"] and len(judge["records"]) > 40 * 10
    assert "judge: " in report and m["restore/controlled/judge_records"] == len(judge["records"])
    assert all("judged" in s for r in rows for s in r["steps"] if s["action"] == "applied")
    # the stored thresholds and judge are reused as they are
    again = tmp_path / "again"
    assert main(["restore", f"input={root}", "split=test", "model=baseline:classical",
                 "restore.plan=controlled", f"restore.thresholds={out / 'thresholds.json'}",
                 f"restore.judge={out / 'judge.json'}",
                 f"output={again}", "tracking.enabled=false", "calibration_samples=40"]) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert m2["test/psnr/controlled"] == m["test/psnr/controlled"]
    # the same rows and settings again: the records come from the cache, the result is the same
    entries = list((tmp_path / "cache" / "judge").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["records"] == judge["records"]
    cached = tmp_path / "cached"
    common = [f"input={root}", "split=test", "model=baseline:classical", "restore.plan=controlled",
              "tracking.enabled=false", "calibration_samples=40"]
    assert main(["restore", *common, f"output={cached}"]) == 0
    m3 = json.loads((cached / "metrics.json").read_text())
    assert "records reused from" in json.loads((cached / "judge.json").read_text())["source"]
    assert m3["test/psnr/controlled"] == m["test/psnr/controlled"]
    assert m3["restore/controlled/judge_seconds"] < m["restore/controlled/judge_seconds"]
    # a damaged entry is collected again and replaced (keys of other settings: unit test)
    entries[0].write_text("{")
    assert main(["restore", *common, f"output={tmp_path / 'redo'}"]) == 0
    assert json.loads(entries[0].read_text())["records"] == judge["records"]


def test_controlled_plan_needs_a_confidence(tmp_path, capsys):
    imgs = _folder(tmp_path, n=1)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(BLUR))
    assert main(["restore", f"input={imgs}", f"annotation={ann}", "restore.plan=controlled",
                 f"output={tmp_path / 'o'}", "tracking.enabled=false"]) == 2
    assert "needs a per-step confidence" in capsys.readouterr().err


def test_controlled_plan_thresholds_file_must_exist(tmp_path, capsys):
    probs = {"low_light": 1}
    root = write_dataset(tmp_path / "ds", {"train": 10, "test": 2}, size=64, seed=1,
                         type_probs=probs, max_degradations=1, clean_fraction=0.0)
    assert main(["restore", f"input={root}", "split=test", "model=baseline:classical",
                 "restore.plan=controlled", f"restore.thresholds={tmp_path / 'nope.json'}",
                 f"output={tmp_path / 'o'}", "tracking.enabled=false"]) == 2
    assert "restore.thresholds" in capsys.readouterr().err
    (tmp_path / "judge.json").write_text("{}")
    assert main(["restore", f"input={root}", "split=test", "model=baseline:classical",
                 "restore.plan=controlled", f"restore.judge={tmp_path / 'judge.json'}",
                 f"output={tmp_path / 'o3'}", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "restore.judge" in err and "not usable" in err
    # no val split to calibrate on and no thresholds file: one line, exit 2
    assert main(["restore", f"input={root}", "split=test", "model=baseline:classical",
                 "restore.plan=controlled", f"output={tmp_path / 'o2'}",
                 "tracking.enabled=false", "calibration_samples=10"]) == 2
    assert "has no val rows" in capsys.readouterr().err


def test_controlled_plan_with_the_tiny_vlm(tmp_path, ray_local):
    """A VLM's confidence is the probability of its type tokens (vLLM log-probs of the one
    call); thresholds are calibrated on val predictions served in the same engine session."""
    probs = {"low_light": 1, "haze": 1}
    root = write_dataset(tmp_path / "ds", {"train": 12, "val": 3, "test": 2}, size=56, seed=5,
                         type_probs=probs, max_degradations=1, clean_fraction=0.0)
    out = tmp_path / "out"
    assert main(["restore", f"input={root}", "split=test", "model=tiny", f"output={out}",
                 "restore.plan=controlled", "calibration_samples=12", "tracking.enabled=false",
                 "generation.structured=true", "generation.max_tokens=300",
                 "generation.temperature=1.0", "generation.seed=3"]) == 0
    th = json.loads((out / "thresholds.json").read_text())
    assert th["score"] == "vlm_type_probability" and "(3 rows)" in th["source"]
    rows = [json.loads(x) for x in (out / "controller.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    steps = [s for r in rows for s in r["steps"]]
    # seeded sampling under the grammar ends in parsed answers: every step has a probability
    assert steps and all(0.0 < s["score"] <= 1.0 for s in steps)
    m = json.loads((out / "metrics.json").read_text())
    assert "test/psnr/controlled" in m and "test/worse_than_identity" in m


def test_diagnose_with_the_true_answer_given_equals_the_oracle(tmp_path, capsys):
    """restore.diagnose on the plain plan: given the true annotations as the 'prediction', both
    mixed kinds are the oracle itself (nothing to attribute); without a split: exit 2."""
    probs = {"gaussian_blur": 1, "low_light": 1, "jpeg": 1}
    root = write_dataset(tmp_path / "ds", {"train": 20, "test": 6}, size=64, seed=4,
                         type_probs=probs, max_degradations=1, clean_fraction=0.2)
    ann = tmp_path / "true.jsonl"
    ann.write_text("".join(json.dumps({"sample_id": s.sample_id, "annotation": s.annotation})
                           + "\n" for s in iter_samples(str(root), ["test"])))
    out = tmp_path / "out"
    assert main(["restore", f"input={root}", "split=test", f"annotation={ann}",
                 "restore.diagnose=true", f"output={out}", "tracking.enabled=false",
                 "calibration_samples=20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for kind in ("oracle_type", "oracle_values", "predicted"):
        assert m[f"test/psnr/{kind}"] == m["test/psnr/oracle"], kind
    assert m["test/gap/oracle"] == 0.0 and m["test/oracle_type/values_filled"] == 0.0
    assert "| all | 6 |" in (out / "report.md").read_text()
    assert main(["restore", f"input={tmp_path / 'ds'}", f"annotation={ann}",
                 "restore.diagnose=true", f"output={tmp_path / 'o2'}",
                 "tracking.enabled=false"]) == 2
    assert "restore.diagnose=true" in capsys.readouterr().err
