"""One shard: crops, rows that re-apply exactly, and a Parquet file that appears only complete."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dutrain.data.plan import Crop
from dutrain.data.shard import SCHEMA, crop_box, crop_rows, write_rows
from dutrain.degrade import apply_chain
from dutrain.io.dataset import COLUMNS, decode_png
from dutrain.schema import canonical_json

PARAMS = dict(image_size=32, seed=7, png_level=1, min_crop_std=0.0, clean_fraction=0.3,
              type_probs=None, max_degradations=3, max_pixels=10**8)


def image(h=80, w=100, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_schema_is_the_design_contract():
    assert tuple(SCHEMA.names) == COLUMNS


def test_crop_box_is_seeded_and_inside():
    img = image()
    boxes = {crop_box(img, 32, s, 0.0) for s in range(50)}
    assert len(boxes) > 40
    assert all(0 <= top <= 48 and 0 <= left <= 68 for top, left in boxes)
    assert crop_box(img, 32, 3, 0.0) == crop_box(img, 32, 3, 0.0)


def test_crop_box_avoids_flat_regions():
    img = np.full((64, 256, 3), 128, np.uint8)
    img[:, 200:] = np.random.default_rng(0).integers(0, 256, (64, 56, 3))  # detail on the right
    lefts = [crop_box(img, 32, s, 0.05)[1] for s in range(20)]
    assert all(left + 32 > 200 for left in lefts)


def test_rows_reapply_exactly_and_share_the_clean_crop():
    rows = list(crop_rows(image(), Crop("src/a.png", 2, "train", 6), PARAMS))
    assert [r["sample_id"] for r in rows] == [f"src/a.png:2:{v}" for v in range(6)]
    assert len({r["clean"] for r in rows}) == 1
    assert len({r["seed"] for r in rows}) == 6
    clean = decode_png(rows[0]["clean"])
    assert clean.shape == (32, 32, 3)
    for r in rows:
        ann = json.loads(r["annotation"])
        assert canonical_json(ann) == r["annotation"]
        np.testing.assert_array_equal(decode_png(r["degraded"]), apply_chain(clean, ann, r["seed"]))
    again = list(crop_rows(image(), Crop("src/a.png", 2, "train", 6), PARAMS))
    assert again == rows


def test_ood_rows_are_never_clean():
    rows = list(crop_rows(image(), Crop("src/a.png", 0, "ood", 20),
                          {**PARAMS, "clean_fraction": 1.0}))
    assert all(json.loads(r["annotation"])["degradations"] for r in rows)
    assert {r["split"] for r in rows} == {"ood"}


def test_write_is_complete_or_absent(tmp_path):
    rows = list(crop_rows(image(), Crop("s", 0, "val", 5), PARAMS))
    assert write_rows(iter(rows), str(tmp_path), "part-00000.parquet", None, {"k": "v"}) == 5
    t = pq.read_table(tmp_path / "part-00000.parquet")
    assert t.schema.remove_metadata() == SCHEMA and t.to_pylist() == rows
    assert t.schema.metadata[b"k"] == b"v"

    def failing():
        yield from rows
        raise RuntimeError("worker died")
    with pytest.raises(RuntimeError):
        write_rows(failing(), str(tmp_path), "part-00001.parquet", None, {})
    assert not (tmp_path / "part-00001.parquet").exists()
    assert list((tmp_path / "_tmp").iterdir()) == []
