"""`dutrain generate` with sources and output on a real S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.fs as pafs
import s3fs
from PIL import Image

from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data.generate import generate
from dutrain.data.plan import split_of
from dutrain.data.sources import load_builtin
from dutrain.degrade import apply_chain
from dutrain.io.dataset import COLUMNS, decode_png, read_table


def test_s3_sources_and_output(ray_local, s3_env, tmp_path, monkeypatch):
    bucket, endpoint = s3_env["bucket"], s3_env["endpoint"]
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        buf = io.BytesIO()
        Image.fromarray(load_builtin(name)[0]).save(buf, format="PNG")
        fs.pipe(f"{bucket}/clean/photos/{name}.png", buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(load_builtin("cat")[0]).save(buf, format="JPEG", quality=95)
    fs.pipe(f"{bucket}/clean/extra/cat.jpg", buf.getvalue())
    fs.pipe(f"{bucket}/clean/extra/list.txt", b"# one more\ncat.jpg\n")
    fs.pipe(f"{bucket}/clean/photos/readme.md", b"not an image extension: not listed")
    ids = [f"photos/{n}.png" for n in ("astronaut", "coffee", "chelsea", "rocket",
                                       "immunohistochemistry")] + ["cat.jpg"]
    assert "test" in {split_of(i, 0.2, 0.5) for i in ids}  # ood rows need a test source

    out = f"s3://{bucket}/datasets/demo"
    cfg = load_config(GenerateConfig, overrides=[
        f"output={out}", f"sources=[s3://{bucket}/clean/photos,s3://{bucket}/clean/extra/list.txt]",
        "samples=120", "image_size=64", "rows_per_shard=50", "val_fraction=0.2",
        "test_fraction=0.5", "progress=false", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    result = generate(cfg)
    assert result.rows == 120

    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/datasets/demo"))
    assert names == ["_plan.json", "dataset_card.json", "part-00000.parquet",
                     "part-00001.parquet", "part-00002.parquet", "preview.png"]
    card = json.loads(fs.cat(f"{bucket}/datasets/demo/dataset_card.json"))
    assert card["sources"]["listed"] == 6 and card["rejects"] == []
    assert card["counts"]["per_split"]["ood"] == 12

    table = read_table(out)  # dutrain's reader (s3fs, endpoint from AWS_ENDPOINT_URL)
    assert table.num_rows == 120 and tuple(table.column_names) == COLUMNS
    assert {s.split("/")[0] for s in table.column("source_id").to_pylist()} <= {"photos", "cat.jpg"}
    for r in table.to_pylist():
        clean = decode_png(r["clean"])
        np.testing.assert_array_equal(decode_png(r["degraded"]),
                                      apply_chain(clean, json.loads(r["annotation"]), r["seed"]))

    s3 = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http",
                           access_key=os.environ["AWS_ACCESS_KEY_ID"],
                           secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region="us-east-1")
    import pyarrow.dataset as pads
    assert pads.dataset(f"{bucket}/datasets/demo", filesystem=s3, format="parquet",
                        exclude_invalid_files=True).count_rows() == 120
    import ray
    assert ray.data.read_parquet(f"{bucket}/datasets/demo", filesystem=s3).count() == 120
    import datasets
    # offline mode (conftest) blocks every remote URL in datasets; this one is on loopback
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hf = datasets.load_dataset(
        "parquet", data_files=f"{out}/*.parquet", split="train", cache_dir=str(tmp_path / "hf"),
        storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    assert hf.num_rows == 120
