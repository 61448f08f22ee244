"""`dutrain generate` end to end on a local Ray cluster (2 CPUs, loopback)."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data.generate import GenerateError, generate, is_finished, run
from dutrain.data.shard import SCHEMA
from dutrain.degrade import apply_chain
from dutrain.io.dataset import COLUMNS, SPLITS, decode_png, read_table
from dutrain.schema import TAXONOMY, canonical_json, check_annotation

SMALL = ["image_size=64", "samples=240", "rows_per_shard=64", "progress=false"]


def config(out, *overrides, tracking=None):
    track = [f"tracking.uri={tracking}", "tracking.experiment=generate-tests"] if tracking \
        else ["tracking.enabled=false"]
    return load_config(GenerateConfig, overrides=[f"output={out}", *SMALL, *track, *overrides])


@pytest.fixture(scope="module")
def dataset(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("generate")
    db = f"sqlite:///{d / 'mlflow.db'}"
    result = generate(config(d / "ds", tracking=db))
    return {"root": str(d / "ds"), "db": db, "result": result}


def test_rows_read_back_with_three_readers_and_reapply_exactly(dataset):
    root = dataset["root"]
    files = sorted(f for f in os.listdir(root) if f.endswith(".parquet"))
    assert files == [f"part-{k:05d}.parquet" for k in range(4)]
    # pyarrow: the card and preview sit beside the part files, so skip non-Parquet files
    table = pads.dataset(root, format="parquet", exclude_invalid_files=True).to_table()
    assert table.schema.remove_metadata() == SCHEMA and tuple(table.column_names) == COLUMNS
    assert table.num_rows == 240

    import ray
    assert ray.data.read_parquet(root).count() == 240

    import datasets
    hf = datasets.load_dataset("parquet", data_files=f"{root}/*.parquet", split="train",
                               cache_dir=os.path.join(root, "..", "hf-cache"))
    assert hf.num_rows == 240 and set(hf.column_names) == set(COLUMNS)

    rows = table.sort_by("sample_id").to_pylist()
    ids = [r["sample_id"] for r in rows]
    assert len(set(ids)) == 240
    split_of_source: dict[str, set[str]] = {}
    for r in rows:
        assert r["sample_id"].rsplit(":", 2)[0] == r["source_id"]
        assert r["split"] in SPLITS and r["width"] == r["height"] == 64
        split_of_source.setdefault(r["source_id"], set()).add(r["split"])
        ann, errors = check_annotation(json.loads(r["annotation"]))
        assert not errors and canonical_json(ann) == r["annotation"]
        clean = decode_png(r["clean"])
        assert clean.shape == (64, 64, 3)
        np.testing.assert_array_equal(decode_png(r["degraded"]), apply_chain(clean, ann, r["seed"]))
    for s in split_of_source.values():  # no source in two splits; ood only beside test
        assert len(s - {"ood"}) <= 1 and ("ood" not in s or s <= {"test", "ood"})
    splits = {r["split"] for r in rows}
    assert splits == {"train", "val", "test", "ood"}
    assert sum(r["split"] == "ood" for r in rows) == 24
    assert any(json.loads(r["annotation"]) == {"degradations": []} for r in rows)
    assert any(len(json.loads(r["annotation"])["degradations"]) == 1 for r in rows)


def test_card_preview_and_mlflow_run(dataset):
    root = dataset["root"]
    card = json.load(open(os.path.join(root, "dataset_card.json")))
    assert card["counts"]["rows"] == 240 and sum(card["counts"]["per_split"].values()) == 240
    assert card["config"]["samples"] == 240 and card["sources"]["used"] == 17
    assert card["rejects"] == [] and card["timing"]["rows_per_s"] > 0
    for name, hist in card["value_histograms"].items():  # one value per row of the type
        t, k = name.split(".")
        assert k in TAXONOMY[t].keys and sum(hist.values()) == card["counts"]["per_type"][t]
    with Image.open(os.path.join(root, "preview.png")) as im:
        assert im.width > 500 and im.height > 150

    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=dataset["db"])
    exp = client.get_experiment_by_name("generate-tests")
    (run_,) = client.search_runs([exp.experiment_id])
    assert run_.data.tags["dutrain.stage"] == "generate" and run_.info.status == "FINISHED"
    assert run_.data.params["samples"] == "240"
    assert run_.data.metrics["generate/rows"] == 240
    assert run_.data.metrics["generate/rows_per_s"] > 0
    arts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"dataset_card.json", "preview.png", "config.yaml"} <= arts


def test_same_rows_whatever_the_workers_and_finished_output_kept(dataset, tmp_path):
    out = tmp_path / "one-worker"
    generate(config(out, "workers=1", "rows_per_shard=100"))
    a = read_table(dataset["root"])
    b = read_table(str(out))
    assert a.equals(b)  # same ids, annotations, seeds and PNG bytes
    assert len(os.listdir(out)) == 3 + 3  # 3 part files (different sharding), plan, card, preview

    same = config(out, "workers=1", "rows_per_shard=100")
    assert is_finished(same) and not is_finished(config(out, "seed=1"))
    with pytest.raises(GenerateError, match="finished dataset \\(made by this same config"):
        generate(same)
    with pytest.raises(GenerateError, match="another config"):
        run(config(out, "seed=1"))  # the CLI prints it as one line, exit 2
    r = generate(config(out, "samples=20", "overwrite=true"))
    assert r.rows == 20 and read_table(str(out)).num_rows == 20


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def bad_corpus(d) -> dict[str, str]:
    """Images that must be converted, and files that must be rejected (name → reason)."""
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "good.png")
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png", transparency=3)
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=90)
    Image.fromarray((rng.integers(0, 65536, (96, 96))).astype(np.uint16)).save(d / "deep16.png")
    (d / "zero.png").write_bytes(b"")
    (d / "text.jpg").write_text("this is a text file with an image extension")
    (d / "truncated.png").write_bytes(_png(Image.fromarray(rgb))[:500])
    Image.fromarray(rgb[:40, :50]).save(d / "small.png")

    def chunk(t: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
        + chunk(b"IEND", b""))
    return {"zero.png": "empty file", "text.jpg": "not an image", "truncated.png": "truncated",
            "small.png": "too small: 50x40", "bomb.png": "decompression-bomb guard"}


def test_dead_leaves_rows_train_and_the_held_out_splits_stay_photos(ray_local, tmp_path):
    """Procedural images add training content only: whatever their ids hash to, every one of
    their rows is `train`, and val/test/ood rows come from the same photos as without them."""
    out, photos_only = tmp_path / "mixed", tmp_path / "photos"
    generate(config(out, "sources=[builtin,dead_leaves:20]", "samples=296"))
    generate(config(photos_only, "samples=120"))
    rows = read_table(str(out)).to_pylist()
    by_split: dict[str, set[str]] = {}
    for r in rows:
        by_split.setdefault(r["split"], set()).add(r["source_id"])
    procedural = {s for s in set().union(*by_split.values()) if s.startswith("dead_leaves/")}
    assert len(procedural) == 20 and procedural <= by_split["train"]
    ref = read_table(str(photos_only), columns=["source_id", "split"]).to_pylist()
    for split in ("val", "test"):
        assert by_split[split] == {r["source_id"] for r in ref if r["split"] == split}, split
    assert by_split["ood"] <= by_split["test"]
    # the same crop of a test photo is the same image with or without the procedural sources
    held = [r for r in rows if r["split"] == "test"]
    ref_rows = {r["sample_id"]: r for r in read_table(str(photos_only)).to_pylist()}
    shared = [r for r in held if r["sample_id"] in ref_rows]
    assert shared and all(r["degraded"] == ref_rows[r["sample_id"]]["degraded"] for r in shared)


def test_bad_inputs_are_rejected_with_reasons_and_never_sink_the_run(ray_local, tmp_path):
    bad = bad_corpus(tmp_path / "mixed")
    out = tmp_path / "ds"
    r = generate(config(out, f"sources=[{tmp_path / 'mixed'}]", "samples=48", "ood_fraction=0",
                        "max_pixels=50000000"))
    assert r.rows == 48
    card = r.card
    rejects = {x["source_id"].split("/", 1)[1]: x["reason"] for x in card["rejects"]}
    assert set(rejects) == set(bad)
    for name, reason in bad.items():
        assert reason in rejects[name], (name, rejects[name])
    assert card["sources"] == {**card["sources"], "listed": 11, "used": 6, "rejected": 5}
    assert card["sources"]["conversions"] == {
        "16-bit->8-bit": 1, "alpha->rgb on white": 1, "cmyk->rgb": 1, "gray->rgb": 1,
        "palette+alpha->rgb on white": 1}
    used = set(read_table(str(out), columns=["source_id"]).column("source_id").to_pylist())
    assert used <= {f"mixed/{n}" for n in ("good.png", "gray.png", "palette.png", "rgba.png",
                                           "cmyk.jpg", "deep16.png")}


def test_killed_run_resumes_to_the_uninterrupted_dataset(ray_local, tmp_path):
    args = ["image_size=96", "samples=480", "rows_per_shard=32", "workers=1"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dutrain.cli", "generate", f"output={out}", *args,
         "tracking.enabled=false", "progress=false", "ray.num_cpus=1"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    deadline = time.time() + 120
    parts: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        parts = sorted(f for f in os.listdir(out) if f.startswith("part-")) if out.exists() else []
        if len(parts) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(parts) < 15, f"the run was not interrupted part-way: {parts}"
    assert not (out / "dataset_card.json").exists()

    resumed = generate(config(out, *args))
    assert resumed.shards_skipped >= 2 and resumed.rows_written <= 480 - 2 * 32
    reference = tmp_path / "whole"
    generate(config(reference, *args))
    a, b = read_table(str(out)), read_table(str(reference))
    assert a.num_rows == 480 and a.equals(b)
    assert not (out / "_tmp").exists()
    assert sorted(os.listdir(out)) == sorted(os.listdir(reference))


def test_resume_with_another_config_is_refused(ray_local, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "_plan.json").write_text(json.dumps({"fingerprint": "other", "params": {"seed": 5}}))
    with pytest.raises(GenerateError, match="another config \\(differs in: .*seed"):
        generate(config(out))
    (out / "_plan.json").unlink()
    (out / "mine.csv").write_text("user data")
    with pytest.raises(GenerateError, match="did not write \\(mine.csv\\)"):
        generate(config(out, "overwrite=true"))
    assert (out / "mine.csv").exists()
