"""A small dutrain dataset written straight from `dutrain.degrade` for the eval tests.

`write_dataset` is imported by the other eval tests; the test here checks that what it writes is
a dataset the shared reader understands (docs/design.md §4 columns, canonical annotations).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dutrain.degrade import apply_chain, sample_chain
from dutrain.schema import canonical_json

SOURCES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "brick",
           "gravel", "grass", "hubble_deep_field", "immunohistochemistry", "retina", "clock",
           "page", "text")


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _source(name: str) -> np.ndarray:
    import skimage.data
    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype != np.uint8:
        span = max(1e-9, float(img.max() - img.min()))
        img = np.rint(255 * (img - img.min()) / span).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def split_of(source: str) -> str:
    h = int(hashlib.sha1(source.encode()).hexdigest(), 16) % 10
    return "train" if h < 6 else ("val" if h < 7 else "test")


def write_dataset(root: Path, per_split: Mapping[str, int], size: int = 96, seed: int = 0,
                  type_probs: Mapping[str, float] | None = None, max_degradations: int = 3,
                  clean_fraction: float = 0.1) -> Path:
    """Rows per split ("train"/"val"/"test" by source hash, "ood" from any source)."""
    rng = np.random.default_rng(seed)
    images = {s: _source(s) for s in SOURCES}
    by_split: dict[str, list[str]] = {}
    for s in SOURCES:
        by_split.setdefault(split_of(s), []).append(s)
    by_split["ood"] = list(SOURCES)
    rows = []
    for split, n in per_split.items():
        for i in range(n):
            src = by_split[split][i % len(by_split[split])]
            img = images[src]
            y = int(rng.integers(0, img.shape[0] - size + 1))
            x = int(rng.integers(0, img.shape[1] - size + 1))
            crop = np.ascontiguousarray(img[y:y + size, x:x + size])
            ann = sample_chain(rng, "ood" if split == "ood" else "train",
                               clean_fraction=clean_fraction, type_probs=type_probs,
                               max_degradations=max_degradations)
            row_seed = int(rng.integers(0, 2**31))
            rows.append({
                "sample_id": f"{src}:{y}_{x}:{split}{i}", "source_id": src, "split": split,
                "seed": row_seed, "clean": _png(crop),
                "degraded": _png(apply_chain(crop, ann, row_seed)), "width": size, "height": size,
                "annotation": canonical_json(ann), "generator_version": "test"})
    schema = pa.schema([("sample_id", pa.string()), ("source_id", pa.string()),
                        ("split", pa.string()), ("seed", pa.int64()), ("clean", pa.binary()),
                        ("degraded", pa.binary()), ("width", pa.int32()), ("height", pa.int32()),
                        ("annotation", pa.string()), ("generator_version", pa.string())])
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "part-00000.parquet")
    return root


def test_written_dataset_reads_back(tmp_path):
    from dutrain.io.dataset import iter_samples, read_table
    root = write_dataset(tmp_path / "ds", {"train": 3, "test": 2, "ood": 2}, size=64)
    t = read_table(str(root), ["test", "ood"], columns=["sample_id", "split", "annotation"])
    assert sorted(t.column("split").to_pylist()) == ["ood", "ood", "test", "test"]
    samples = list(iter_samples(str(root), ["ood"]))
    assert all(s.degraded.shape == (64, 64, 3) and s.annotation["degradations"] for s in samples)


def test_read_table_limit_is_a_spread_subset_not_a_prefix(tmp_path):
    from dutrain.io.dataset import read_table
    root = write_dataset(tmp_path / "ds", {"train": 60}, size=32)
    full = read_table(str(root), ["train"], ["sample_id", "source_id"])
    sub = read_table(str(root), ["train"], ["sample_id", "source_id"], limit=12)
    ids = sub.column("sample_id").to_pylist()
    assert len(ids) == 12 and ids == sorted(ids)
    assert set(ids) < set(full.column("sample_id").to_pylist())
    assert ids != full.column("sample_id").to_pylist()[:12]  # not the first rows by id
    # the first 12 by id come from one or two photos; the subset spreads over more of them
    assert len(set(sub.column("source_id").to_pylist())) > len(set(
        full.column("source_id").to_pylist()[:12]))
    assert read_table(str(root), ["train"], ["sample_id"], limit=12).column(
        "sample_id").to_pylist() == ids  # deterministic
