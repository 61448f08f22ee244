"""Throughput of `generate` at 512x512 (issue 3): plain loop vs Ray Data on 1 and 2 CPUs vs the
PNG-encode floor, plus the PNG level trade-off. Prints one JSON object.

    .venv/bin/python tests/benchmarks/bench_generate.py [--rows 256]

(a) loop: the same library calls as a shard task (decode, crop, sample, apply, PNG, Parquet) in
    one process; (b1, b2) `dutrain.data.generate.generate` on a local Ray cluster with 1 and 2
    CPUs, timed over the shard phase (its card's generate_s; cluster start and the source probe
    are reported apart); (c) PNG encoding alone of exactly the images the pipeline encodes.
Rates are rows/s of wall time; `rows_per_cpu_s` / `rows_per_task_cpu_s` divide by the CPU time of
the loop / of the shard tasks, which other processes on a shared machine disturb much less (the
load average is printed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dutrain.config import load_config
from dutrain.config.generate import GenerateConfig
from dutrain.data.generate import generate
from dutrain.data.plan import plan_crops, plan_shards, shard_name, split_of
from dutrain.data.shard import shard_rows, write_rows
from dutrain.data.sources import list_sources, load_source, train_only
from dutrain.io.dataset import decode_png, read_table
from dutrain.io.images import Rejected, check_size

SIZE = 512


def config(out: str, rows: int, *extra: str) -> GenerateConfig:
    return load_config(GenerateConfig, overrides=[
        f"output={out}", f"samples={rows}", f"image_size={SIZE}", "rows_per_shard=32",
        "progress=false", "tracking.enabled=false", *extra])


def plain_loop(cfg: GenerateConfig, out: str) -> dict:
    """Rate of the shard work in one process (the probe is not timed, as for Ray)."""
    splits, uris = {}, {}
    for ref in list_sources(cfg.sources):
        try:
            check_size(load_source(ref.uri, None, cfg.max_pixels)[0], cfg.image_size)
        except Rejected:
            continue
        splits[ref.source_id] = "train" if train_only(ref.uri) else split_of(
            ref.source_id, cfg.val_fraction, cfg.test_fraction)
        uris[ref.source_id] = ref.uri
    crops = plan_crops(splits, cfg.samples, cfg.ood_fraction, cfg.variants_per_crop, cfg.seed)
    params = {k: getattr(cfg, k) for k in ("image_size", "seed", "png_level", "min_crop_std",
                                           "clean_fraction", "type_probs", "max_degradations",
                                           "max_pixels")}
    os.makedirs(out, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for k, shard in enumerate(plan_shards(crops, cfg.rows_per_shard)):
        n += write_rows(shard_rows(shard, uris, params, None), out, shard_name(k), None, {})
    return {"rows_per_s": round(n / (time.perf_counter() - t0), 2),
            "rows_per_cpu_s": round(n / (time.process_time() - c0), 2)}


def ray_run(cfg: GenerateConfig) -> dict:
    t0 = time.perf_counter()
    card = generate(cfg).card
    t = card["timing"]
    return {"rows_per_s": t["rows_per_s"],
            "rows_per_task_cpu_s": round(1 / t["task_cpu_s_per_row"], 2),
            "generate_s": t["generate_s"], "probe_s": t["probe_s"],
            "wall_s": round(time.perf_counter() - t0, 2)}


def png_floor(root: str, level: int) -> dict:
    """Rate of encoding exactly what the pipeline encodes: each clean crop once, each
    degraded image (a clean row reuses its clean PNG)."""
    t = read_table(root, columns=["sample_id", "clean", "degraded", "annotation"])
    rows = t.to_pylist()
    cleans = {r["clean"] for r in rows}
    images = [decode_png(b) for b in cleans]
    images += [decode_png(r["degraded"]) for r in rows if r["degraded"] != r["clean"]]
    t0, c0 = time.perf_counter(), time.process_time()
    for im in images:
        Image.fromarray(im).save(io.BytesIO(), format="PNG", compress_level=level)
    return {"rows_per_s": round(len(rows) / (time.perf_counter() - t0), 2),
            "rows_per_cpu_s": round(len(rows) / (time.process_time() - c0), 2)}


def png_levels(root: str) -> dict:
    t = read_table(root, columns=["degraded"], limit=24)
    images = [decode_png(b) for b in t.column("degraded").to_pylist()]
    out = {}
    for level in (0, 1, 3, 6):
        t0 = time.perf_counter()
        sizes = []
        for im in images:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG", compress_level=level)
            sizes.append(buf.tell())
        out[str(level)] = {"ms_per_image": round((time.perf_counter() - t0) / len(images) * 1e3, 1),
                           "kb_per_image": round(float(np.mean(sizes)) / 1024, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        base = config(str(Path(tmp) / "loop"), args.rows)
        a = plain_loop(base, str(Path(tmp) / "loop"))
        b1 = ray_run(config(str(Path(tmp) / "ray1"), args.rows, "ray.num_cpus=1"))
        b2 = ray_run(config(str(Path(tmp) / "ray2"), args.rows, "ray.num_cpus=2"))
        c = png_floor(str(Path(tmp) / "loop"), base.png_level)
        levels = png_levels(str(Path(tmp) / "loop"))
    r1, r2, a_wall = b1["rows_per_s"], b2["rows_per_s"], a["rows_per_s"]
    eff = r2 / (2 * r1)
    print(json.dumps({
        "image_size": SIZE, "rows": args.rows, "png_level": base.png_level,
        "variants_per_crop": base.variants_per_crop, "cpu_count": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "a_loop": a, "b1_ray_1cpu": b1, "b2_ray_2cpu": b2,
        "c_png_floor": c,
        "ratios": {"b2/a": round(r2 / a_wall, 3), "b2/b1": round(r2 / r1, 3),
                   "c/a": round(c["rows_per_s"] / a_wall, 3),
                   "cpu_time": {"b1/a": round(b1["rows_per_task_cpu_s"] / a["rows_per_cpu_s"], 3),
                                "c/a": round(c["rows_per_cpu_s"] / a["rows_per_cpu_s"], 3)}},
        "ray_overhead_vs_loop": round(1 - r1 / a_wall, 3),
        "parallel_efficiency_2cpu": round(eff, 3),
        "rows_per_s_per_core": round(r2 / 2, 2),
        "du110k_minutes_on_64_cores_extrapolated":
            round(110_000 / (r1 * 64 * min(eff, 1.0)) / 60, 1),
        "png_levels_512": levels,
    }, indent=1))


if __name__ == "__main__":
    sys.exit(main())
