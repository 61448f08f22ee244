"""Reading a dutrain dataset (docs/design.md §4): Parquet rows with PNG bytes and an annotation.

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
import pyarrow.parquet as pq
from PIL import Image

from dutrain.errors import UserError
from dutrain.schema import SPLITS

from .storage import filesystem

COLUMNS = ("sample_id", "source_id", "split", "seed", "clean", "degraded", "width", "height",
           "annotation", "generator_version")


#: written by `generate`: the plan first, the card last (its presence marks a finished dataset)
PLAN_FILE = "_plan.json"
CARD_FILE = "dataset_card.json"


class DatasetError(UserError, FileNotFoundError):
    """A dataset that cannot be read as a whole: missing, unfinished, damaged or not dutrain's.

    A FileNotFoundError too, so callers that already handle a missing dataset handle it."""


def _read_json(fs: Any, path: str, root: str, name: str) -> Any:
    try:
        with fs.open(f"{path}/{name}", "r") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset '{root}': {name} is damaged or unreadable "
                           f"({type(exc).__name__}: {exc}); regenerate the dataset "
                           f"(generate overwrite=true)") from None


def _short(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" … ({len(names)} in all)" if len(names) > 3 else "")


def check_dataset(root: str, storage: Any = None,
                  allow_partial: bool = False) -> tuple[Any, list[str]]:
    """(filesystem, sorted part-file paths) of a readable dataset; else DatasetError in one line.

    One check for every reader (eval, sft, rl, restore): the root must hold Parquet part files
    (folders and files starting with '_' or '.' are not data, e.g. generate's `_tmp/`); a root
    holding `generate`'s `_plan.json` but no `dataset_card.json` is an unfinished generation and is
    refused unless `allow_partial` (generate itself, while writing); a card's listed part files
    must all be present; every part file's footer must read and hold the dutrain columns. A root
    with Parquet files and neither plan nor card (not written by `generate`) is read as it is.
    """
    fs, path = filesystem(root, storage)
    path = path.rstrip("/")
    fs.invalidate_cache()
    try:
        found = fs.find(path)
    except (FileNotFoundError, NotADirectoryError):
        found = []
    if not found and not fs.isdir(path):
        raise DatasetError(f"no dutrain dataset at '{root}': no such folder")
    top = {p.rstrip("/").rsplit("/", 1)[-1] for p in found
           if p.rstrip("/").rsplit("/", 1)[0] == path}
    files = []
    for p in sorted(found):
        rel = p[len(path):].strip("/").split("/")
        if p.endswith(".parquet") and not any(c.startswith(("_", ".")) for c in rel):
            files.append(p)
    names = {p[len(path):].strip("/") for p in files}
    card = _read_json(fs, path, root, CARD_FILE) if CARD_FILE in top else None
    if card is None and PLAN_FILE in top and not allow_partial:
        plan = _read_json(fs, path, root, PLAN_FILE)
        expected = [s.get("name") for s in plan.get("shards", [])]
        missing = [n for n in expected if n not in names]
        raise DatasetError(
            f"dataset '{root}' is unfinished: generate did not finish it (no {CARD_FILE}; "
            f"{len(missing)} of {len(expected)} part files missing"
            f"{': ' + _short(missing) if missing else ''}); rerun `dutrain generate` with the same "
            f"config to finish it")
    if card is not None:
        listed = {f["name"]: f.get("rows") for f in card.get("files", [])}
        missing = sorted(n for n in listed if n not in names)
        if missing:
            raise DatasetError(f"dataset '{root}' is damaged: {len(missing)} of {len(listed)} part "
                               f"files listed in its {CARD_FILE} are missing: {_short(missing)}; "
                               f"regenerate it (generate overwrite=true)")
    else:
        listed = {}
    if not files:
        raise DatasetError(f"no dutrain dataset at '{root}': no Parquet part files there")
    for p in files:
        name = p[len(path):].strip("/")
        try:
            with fs.open(p, "rb") as fh:
                pf = pq.ParquetFile(fh)
                schema, rows = pf.schema_arrow, pf.metadata.num_rows
        except Exception as exc:  # truncated, not Parquet, unreadable: pyarrow raises many types
            raise DatasetError(f"dataset '{root}': part file '{name}' is damaged or not Parquet "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                               f"regenerate it (a `generate` rerun redoes an unfinished run's "
                               f"damaged parts)") from None
        lacking = [c for c in COLUMNS if c not in schema.names]
        if lacking:
            raise DatasetError(f"dataset '{root}': part file '{name}' is not a dutrain part file: "
                               f"it lacks the column(s) {', '.join(lacking)} (a dataset has "
                               f"{', '.join(COLUMNS)})")
        if listed.get(name) is not None and listed[name] != rows:
            raise DatasetError(f"dataset '{root}': part file '{name}' holds {rows} rows, its "
                               f"{CARD_FILE} says {listed[name]}; regenerate it "
                               f"(generate overwrite=true)")
    return fs, files


def parquet_dataset(root: str, storage: Any = None, allow_partial: bool = False) -> pads.Dataset:
    """The dataset's part files as one pyarrow dataset, after `check_dataset`."""
    fs, files = check_dataset(root, storage, allow_partial)
    return pads.dataset(files, filesystem=fs, format="parquet")


def read_table(root: str, splits: Iterable[str] | None = None, columns: Iterable[str] | None = None,
               limit: int | None = None, storage: Any = None,
               allow_partial: bool = False) -> pa.Table:
    """Rows of the given splits (all if None), sorted by sample_id so order is reproducible.

    `limit` keeps a deterministic subset spread over the whole split (the rows whose sample_id
    hashes lowest), not its first rows: ids sort by source image, so a prefix would hold one or
    two photos.
    """
    ds = parquet_dataset(root, storage, allow_partial)
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


def iter_samples(root: str, splits: Iterable[str] | None = None,
                 columns: Iterable[str] | None = None, limit: int | None = None,
                 storage: Any = None) -> Iterator[Sample]:
    table = read_table(root, splits, columns or ("sample_id", "split", "seed", "degraded",
                                                  "annotation"), limit, storage)
    for batch in table.to_batches(max_chunksize=256):
        for row in batch.to_pylist():
            yield Sample.from_row(row)
