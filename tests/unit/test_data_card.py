"""Dataset card statistics and preview selection/rendering."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from dutrain.data.card import caption, dataset_stats, preview_ids, render_preview
from dutrain.data.plan import Crop
from dutrain.data.shard import crop_rows

BLUR = '{"degradations": [{"type": "gaussian_blur", "params": {"sigma": 1.5}}]}'
TWO = ('{"degradations": [{"type": "haze", "params": {"beta": 0.5, "airlight": 0.80}}, '
       '{"type": "jpeg", "params": {"quality": 35}}]}')
CLEAN = '{"degradations": []}'


def table(rows):
    return pa.Table.from_pylist([{"sample_id": i, "source_id": s, "split": sp, "annotation": a}
                                 for i, s, sp, a in rows])


def test_stats_count_splits_types_lengths_and_values():
    t = table([("a:0:0", "a", "train", BLUR), ("a:0:1", "a", "train", CLEAN),
               ("b:0:0", "b", "ood", TWO), ("c:0:0", "c", "test", BLUR)])
    s = dataset_stats(t)
    assert s["rows"] == 4
    assert s["per_split"] == {"train": 2, "test": 1, "ood": 1}
    assert s["per_type"] == {"clean": 1, "haze": 1, "gaussian_blur": 2, "jpeg": 1}
    assert s["per_split_type"]["train"] == {"clean": 1, "gaussian_blur": 1}
    assert s["per_num_degradations"] == {"0": 1, "1": 2, "2": 1}
    assert s["value_histograms"] == {"haze.beta": {"0.5": 1}, "haze.airlight": {"0.80": 1},
                                     "gaussian_blur.sigma": {"1.5": 2}, "jpeg.quality": {"35": 1}}


def test_preview_picks_variety_across_sources():
    t = table([("a:0:0", "a", "train", BLUR), ("a:0:1", "a", "train", CLEAN),
               ("a:0:2", "a", "train", TWO), ("b:0:0", "b", "train", BLUR),
               ("c:0:0", "c", "ood", TWO)])
    ids = preview_ids(t, 4)
    # clean first, then one per type in stage order (haze: only a has one outside ood; blur:
    # b, a source not shown yet, before a), then an ood row
    assert ids == ["a:0:1", "a:0:2", "b:0:0", "c:0:0"]
    assert preview_ids(t, 0) == []


def test_caption_and_render():
    assert caption("a:0:0", "ood", TWO) == ("[ood] a:0:0\n"
                                            "haze beta=0.5, airlight=0.80; jpeg quality=35")
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    params = dict(image_size=32, seed=0, png_level=1, min_crop_std=0.0, clean_fraction=0.0,
                  type_probs=None, max_degradations=2, max_pixels=10**8)
    rows = list(crop_rows(img, Crop("s", 0, "train", 4), params))
    png = render_preview(rows, cell=64, columns=3)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > 3 * 2 * 64 and im.height > 2 * 64
