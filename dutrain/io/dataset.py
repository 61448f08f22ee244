"""Reading a dutrain dataset (DESIGN.md §4): Parquet rows with PNG bytes and an annotation.

This is the one reader every stage uses (SFT, RL, eval, restore); it works on a local root or
an s3:// root and never loads columns it is not asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from PIL import Image

from .storage import filesystem

COLUMNS = ("sample_id", "source_id", "split", "seed", "clean", "degraded", "width", "height",
           "annotation", "generator_version")
SPLITS = ("train", "val", "test", "ood")


def parquet_dataset(root: str, storage: Any = None) -> pads.Dataset:
    fs, path = filesystem(root, storage)
    try:
        return pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True)
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise FileNotFoundError(f"no dutrain dataset at '{root}': {exc}") from None


def read_table(root: str, splits: Iterable[str] | None = None, columns: Iterable[str] | None = None,
               limit: int | None = None, storage: Any = None) -> pa.Table:
    """Rows of the given splits (all if None), sorted by sample_id so order is reproducible.

    `limit` keeps a deterministic subset spread over the whole split (the rows whose sample_id
    hashes lowest), not its first rows: ids sort by source image, so a prefix would hold one or
    two photos.
    """
    ds = parquet_dataset(root, storage)
    cols = list(columns) if columns else list(COLUMNS)
    if "sample_id" not in cols:
        cols.append("sample_id")
    flt = None
    if splits:
        splits = list(splits)
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; allowed: {', '.join(SPLITS)}")
        flt = pads.field("split").isin(splits)
    table = ds.to_table(columns=cols, filter=flt)
    if limit is not None and limit < table.num_rows:
        keys = [hashlib.blake2b(i.encode(), digest_size=8).digest()
                for i in table.column("sample_id").to_pylist()]
        table = table.take(sorted(range(len(keys)), key=keys.__getitem__)[:limit])
    return table.sort_by("sample_id")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → uint8 H×W×3."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@dataclass
class Sample:
    sample_id: str
    split: str
    seed: int
    annotation: dict[str, Any]
    degraded: np.ndarray | None = None
    clean: np.ndarray | None = None
    source_id: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Sample":
        return cls(
            sample_id=row["sample_id"], split=row.get("split", ""), seed=int(row.get("seed", 0)),
            annotation=json.loads(row["annotation"]) if "annotation" in row else {},
            degraded=decode_png(row["degraded"]) if row.get("degraded") is not None else None,
            clean=decode_png(row["clean"]) if row.get("clean") is not None else None,
            source_id=row.get("source_id"),
        )


def iter_samples(root: str, splits: Iterable[str] | None = None, columns: Iterable[str] | None = None,
                 limit: int | None = None, storage: Any = None) -> Iterator[Sample]:
    table = read_table(root, splits, columns or ("sample_id", "split", "seed", "degraded",
                                                  "annotation"), limit, storage)
    for batch in table.to_batches(max_chunksize=256):
        for row in batch.to_pylist():
            yield Sample.from_row(row)
