"""One shard of `generate`: load its sources, cut crops, degrade, encode PNG, write one Parquet
file.

A shard is the unit of work, retry and resume. Its file appears only when complete: locally it
is written under ``_tmp/`` and renamed; on S3 an object becomes visible only when its upload
completes. A retried or resumed shard writes the same rows again (every draw is seeded from
the plan), so a shard is written exactly once in effect whatever fails.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from PIL import Image

from dutrain import __version__
from dutrain.degrade import LUMA_WEIGHTS, apply_chain, sample_chain
from dutrain.io.images import Rejected, check_size
from dutrain.io.storage import filesystem, is_remote
from dutrain.schema import canonical_json

from .plan import Crop, derive_seed
from .sources import load_source

#: docs/design.md §4, fixed
SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("source_id", pa.string()), ("split", pa.string()),
    ("seed", pa.int64()), ("clean", pa.binary()), ("degraded", pa.binary()),
    ("width", pa.int32()), ("height", pa.int32()), ("annotation", pa.string()),
    ("generator_version", pa.string()),
])
ROW_GROUP = 64
_CROP_TRIES = 8
_LUMA = np.array(LUMA_WEIGHTS, np.float32)


class SourceChanged(RuntimeError):
    """A source that passed the probe cannot be read now: the run stops, a rerun resumes."""


def encode_png(image: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def crop_box(image: np.ndarray, size: int, seed: int, min_std: float) -> tuple[int, int]:
    """(top, left) of a size×size crop: the first of up to 8 seeded draws whose luma std (0-1)
    reaches `min_std`, else the most detailed of them."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    best: tuple[float, int, int] | None = None
    for _ in range(_CROP_TRIES):
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        if min_std <= 0:
            return top, left
        std = float((image[top:top + size, left:left + size] @ _LUMA).std()) / 255.0
        if std >= min_std:
            return top, left
        if best is None or std > best[0]:
            best = (std, top, left)
    assert best is not None
    return best[1], best[2]


def crop_rows(image: np.ndarray, crop: Crop, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of one crop; its clean PNG is encoded once and shared by its variants."""
    size, seed, level = params["image_size"], params["seed"], params["png_level"]
    top, left = crop_box(image, size, derive_seed(seed, "crop", f"{crop.source_id}:{crop.crop}"),
                         params["min_crop_std"])
    clean = np.ascontiguousarray(image[top:top + size, left:left + size])
    clean_png = encode_png(clean, level)
    for sid in crop.sample_ids():
        row_seed = derive_seed(seed, "row", sid)
        ann = sample_chain(np.random.default_rng(row_seed),
                           split="ood" if crop.split == "ood" else "train",
                           clean_fraction=params["clean_fraction"],
                           type_probs=params["type_probs"],
                           max_degradations=params["max_degradations"],
                           grid_factor=params.get("grid_factor", 1))
        # an empty chain returns the crop unchanged (x/255*255 rounds back exactly)
        degraded_png = encode_png(apply_chain(clean, ann, row_seed), level) \
            if ann["degradations"] else clean_png
        yield {"sample_id": sid, "source_id": crop.source_id, "split": crop.split,
               "seed": row_seed, "clean": clean_png, "degraded": degraded_png, "width": size,
               "height": size, "annotation": canonical_json(ann), "generator_version": __version__}


def shard_rows(crops: list[Crop], uris: dict[str, str], params: dict[str, Any],
               storage: Any) -> Iterator[dict[str, Any]]:
    """Rows of a shard's crops (sorted by source), each source decoded once."""
    cur_id, image = None, None
    for crop in crops:
        if crop.source_id != cur_id:
            try:
                image, _ = load_source(uris[crop.source_id], storage, params["max_pixels"])
                check_size(image, params["image_size"])
            except Rejected as exc:
                raise SourceChanged(f"source {crop.source_id!r} passed the probe but now fails: "
                                    f"{exc}; restore it or regenerate with overwrite=true"
                                    ) from None
            cur_id = crop.source_id
        yield from crop_rows(image, crop, params)  # type: ignore[arg-type]


def write_rows(rows: Iterator[dict[str, Any]], root: str, name: str, storage: Any,
               metadata: dict[str, str]) -> int:
    """Write rows to `root/name` so that the file exists only once complete; returns the count."""
    fs, base = filesystem(root, storage)
    final = f"{base}/{name}"
    target = final if is_remote(root) else f"{base}/_tmp/{name}.{uuid.uuid4().hex}"
    if not is_remote(root):
        fs.makedirs(f"{base}/_tmp", exist_ok=True)
    schema = SCHEMA.with_metadata({k: str(v) for k, v in metadata.items()})
    n = 0
    try:
        with fs.open(target, "wb") as fh, pq.ParquetWriter(
                fh, schema, compression={"clean": "none", "degraded": "none", "sample_id": "zstd",
                                         "source_id": "zstd", "split": "zstd", "seed": "zstd",
                                         "width": "zstd", "height": "zstd", "annotation": "zstd",
                                         "generator_version": "zstd"},
                # the clean PNG repeats once per variant: dictionary-encode it to store it once
                use_dictionary=["clean", "source_id", "split", "generator_version", "width",
                                "height"],
                dictionary_pagesize_limit=256 << 20) as writer:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) == ROW_GROUP:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    n += len(batch)
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n += len(batch)
    except BaseException:
        if not is_remote(root) and fs.exists(target):
            fs.rm(target)
        raise
    if not is_remote(root):
        os.replace(target, final)
    return n


def run_shard(item: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map function: item = {"spec": JSON of one shard} → a summary row."""
    spec = json.loads(item["spec"])
    t0, c0 = time.perf_counter(), time.process_time()
    storage = SimpleNamespace(**spec["storage"])
    crops = [Crop(*c) for c in spec["crops"]]
    rows = shard_rows(crops, spec["uris"], spec["params"], storage)
    n = write_rows(rows, spec["output"], spec["name"], storage,
                   {"dutrain.fingerprint": spec["fingerprint"], "dutrain.shard": spec["name"]})
    if n != spec["rows"]:
        raise RuntimeError(f"shard {spec['name']} wrote {n} rows, planned {spec['rows']}")
    return {"name": spec["name"], "rows": n, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "node": ray.get_runtime_context().get_node_id()}
