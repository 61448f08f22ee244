"""dataset_card.json statistics and preview.png, computed from the rows actually written."""

from __future__ import annotations

import io
import json
import textwrap
from collections import Counter, defaultdict
from typing import Any, Iterable

import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from dutrain.io.dataset import decode_png
from dutrain.schema import CLEAN, SPLITS, TAXONOMY, TYPES


def _ordered(counter: Counter, order: Iterable[str]) -> dict[str, int]:
    order = list(order)
    keys = [k for k in order if k in counter] + sorted(k for k in counter if k not in order)
    return {k: int(counter[k]) for k in keys}


def dataset_stats(table: pa.Table) -> dict[str, Any]:
    """Counts per split, type (`clean` for an empty chain), chain length and value histograms.

    `table` needs the columns split and annotation.
    """
    per_split: Counter = Counter()
    per_type: Counter = Counter()
    per_split_type: dict[str, Counter] = defaultdict(Counter)
    per_len: Counter = Counter()
    hist: dict[str, Counter] = defaultdict(Counter)
    for split, ann_text in zip(table.column("split").to_pylist(),
                               table.column("annotation").to_pylist()):
        ann = json.loads(ann_text)
        per_split[split] += 1
        types = [d["type"] for d in ann["degradations"]] or [CLEAN]
        per_len[str(len(ann["degradations"]))] += 1
        for t in types:
            per_type[t] += 1
            per_split_type[split][t] += 1
        for d in ann["degradations"]:
            spec = TAXONOMY[d["type"]]
            for p in spec.params:
                hist[f"{d['type']}.{p.key}"][p.format(d["params"][p.key])] += 1
    type_order = (CLEAN, *TYPES)
    key_order = [f"{t}.{p.key}" for t in TYPES for p in TAXONOMY[t].params]
    return {
        "rows": int(table.num_rows),
        "per_split": _ordered(per_split, SPLITS),
        "per_type": _ordered(per_type, type_order),
        "per_split_type": {s: _ordered(per_split_type[s], type_order)
                           for s in SPLITS if s in per_split_type},
        "per_num_degradations": dict(sorted(per_len.items(), key=lambda kv: int(kv[0]))),
        "value_histograms": {k: dict(sorted(hist[k].items(), key=lambda kv: float(kv[0])))
                             for k in key_order if k in hist},
    }


def preview_ids(table: pa.Table, n: int) -> list[str]:
    """Up to n sample_ids showing variety: one clean row, one per type, one ood row, then the
    longest chains, spread over sources; deterministic (table sorted by sample_id).

    `table` needs the columns sample_id, source_id, split and annotation."""
    ids = table.column("sample_id").to_pylist()
    splits = table.column("split").to_pylist()
    anns = [json.loads(a)["degradations"] for a in table.column("annotation").to_pylist()]
    sources = table.column("source_id").to_pylist()
    picked: list[int] = []

    def take(pred: Any) -> None:
        """The first matching row, from a source not shown yet if there is one."""
        shown = {sources[j] for j in picked}
        match = [i for i in range(len(ids)) if i not in picked and pred(i)]
        fresh = [i for i in match if sources[i] not in shown]
        if match:
            picked.append((fresh or match)[0])

    take(lambda i: not anns[i])
    for t in TYPES:
        take(lambda i, t=t: splits[i] != "ood" and any(d["type"] == t for d in anns[i]))
    take(lambda i: splits[i] == "ood")
    for i in sorted(range(len(ids)), key=lambda i: (-len(anns[i]), ids[i])):
        if len(picked) >= n:
            break
        if i not in picked:
            picked.append(i)
    return [ids[i] for i in picked[:n]]


def caption(sample_id: str, split: str, annotation: str) -> str:
    degs = json.loads(annotation)["degradations"]
    if not degs:
        body = "clean"
    else:
        body = "; ".join(d["type"] + " " + ", ".join(
            f"{k}={TAXONOMY[d['type']].param(k).format(v)}" for k, v in d["params"].items())
            for d in degs)
    return f"[{split}] {sample_id}\n{body}"


def render_preview(rows: list[dict[str, Any]], cell: int = 160, columns: int = 3) -> bytes:
    """PNG grid of clean | degraded pairs, each captioned with its split, id and annotation."""
    font = ImageFont.load_default(size=11)
    line_h, text_lines = 13, 5
    pair_w, pair_h = 2 * cell + 6, cell + line_h * text_lines + 8
    n_rows = max(1, -(-len(rows) // columns))
    sheet = Image.new("RGB", (columns * (pair_w + 10) + 10, n_rows * (pair_h + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x = 10 + (i % columns) * (pair_w + 10)
        y = 10 + (i // columns) * (pair_h + 10)
        for j, key in enumerate(("clean", "degraded")):
            im = Image.fromarray(decode_png(row[key])).resize((cell, cell),
                                                              Image.Resampling.NEAREST)
            sheet.paste(im, (x + j * (cell + 6), y))
        lines: list[str] = []
        for part in caption(row["sample_id"], row["split"], row["annotation"]).split("\n"):
            lines += textwrap.wrap(part, width=pair_w // 6) or [""]
        for k, text in enumerate(lines[:text_lines]):
            draw.text((x, y + cell + 4 + k * line_h), text, fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()

