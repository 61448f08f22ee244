"""`dutrain generate`: clean sources → degraded pairs with exact annotations, as Parquet.

    list sources (driver) → probe: read + decode each once (Ray Data; rejects get a reason)
    → plan crops and shards (driver, pure: dutrain.data.plan) → Ray Data maps shards → each
    shard task decodes, crops, degrades, encodes PNG and writes its own part file
    → dataset_card.json + preview.png from the rows written → MLflow run.

Exactly once: the plan and each row depend only on the config, the seed and the sorted source
list, never on the workers. `_plan.json` (written before any shard) pins the plan of an output;
a restarted run checks its config against it, keeps every complete part file and writes only
the missing ones. `dataset_card.json` is written last and marks a finished dataset, which is
never overwritten unless `overwrite=true`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pyarrow.dataset as pads
import pyarrow.parquet as pq
from tqdm import tqdm

from dutrain import __version__
from dutrain.config import redacted, to_dict
from dutrain.config.generate import GenerateConfig
from dutrain.errors import UserError
from dutrain.io.dataset import CARD_FILE, COLUMNS, PLAN_FILE, parquet_dataset, read_table
from dutrain.io.images import Rejected, check_size, is_text, printable_name
from dutrain.io.storage import filesystem, is_remote, s3_options
from dutrain.runtime import preflight
from dutrain.runtime.cluster import forwarded_env, ray_session
from dutrain.tracking import stage_run

from . import photos
from .card import dataset_stats, preview_ids, render_preview
from .plan import PlanError, plan_crops, plan_shards, shard_name, split_of
from .shard import run_shard
from .sources import SourceRef, list_sources, load_source, train_only

PREVIEW_FILE = "preview.png"
TMP_DIR = "_tmp"
#: config keys that decide the rows; a resumed output must agree on all of them
GEN_KEYS = ("sources", "samples", "image_size", "seed", "ood_fraction", "clean_fraction",
            "val_fraction", "test_fraction", "variants_per_crop", "rows_per_shard",
            "max_degradations", "type_probs", "png_level", "min_crop_std", "max_pixels")


class GenerateError(UserError):
    """A run that cannot start or finish; the message says what to change."""


# ------------------------------------------------------------------------------------ inputs

def list_inputs(cfg: GenerateConfig) -> list[SourceRef]:
    """List and check the sources of `cfg` before Ray starts (a bad source, or a packaged photo
    missing or changed: one UserError line; with require_photos=false a warning). The pipeline's
    preflight lists them once and hands the listing to its generate stage (`generate(cfg,
    sources)`), which then does not list and hash every photo again."""
    return list_sources(cfg.sources, cfg.storage, not cfg.require_photos)  # a UserError


@dataclass
class GenerateResult:
    output: str
    rows: int
    rows_written: int
    shards_skipped: int
    card: dict[str, Any] = field(repr=False)


def gen_params(cfg: GenerateConfig) -> dict[str, Any]:
    d = to_dict(cfg)
    out = {**{k: d[k] for k in GEN_KEYS}, "generator_version": __version__}
    if d["grid_factor"] != 1:  # absent at 1, so datasets made before the option keep their id
        out["grid_factor"] = d["grid_factor"]
    return out


def fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


class Root:
    """The output root (local or s3://) as a few file operations."""

    def __init__(self, uri: str, storage: Any):
        self.uri = uri
        self.fs, self.base = filesystem(uri, storage)

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def names(self) -> list[str]:
        self.fs.invalidate_cache()  # s3fs caches listings; workers write behind its back
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1]
                          for p in self.fs.ls(self.base, detail=False))
        except FileNotFoundError:
            return []

    def read_json(self, name: str) -> Any:
        with self.fs.open(self.path(name), "r") as fh:
            return json.load(fh)

    def write(self, name: str, data: bytes) -> None:
        self.fs.makedirs(self.base, exist_ok=True)
        with self.fs.open(self.path(name), "wb") as fh:
            fh.write(data)

    def remove(self, name: str) -> None:
        p = self.path(name)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def part_rows(self, name: str) -> tuple[int, str]:
        """(rows, fingerprint) of a part file from its footer."""
        with self.fs.open(self.path(name), "rb") as fh:
            md = pq.ParquetFile(fh).metadata
        meta = md.metadata or {}
        return md.num_rows, meta.get(b"dutrain.fingerprint", b"").decode()


def _ours(name: str) -> bool:
    return name in (PLAN_FILE, CARD_FILE, PREVIEW_FILE, TMP_DIR) or (
        name.startswith("part-") and name.endswith(".parquet"))


def prepare_output(root: Root, cfg: GenerateConfig, params: dict[str, Any],
                   fp: str) -> dict[str, Any] | None:
    """Check the output before any work; return the plan of an unfinished run to resume."""
    names = root.names()
    foreign = [n for n in names if not _ours(n)]
    if foreign:
        raise GenerateError(f"output {cfg.output!r} holds files that generate did not write "
                            f"({', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}); "
                            f"choose an empty or new output")
    if cfg.overwrite:
        for n in names:
            root.remove(n)
        return None
    if CARD_FILE in names:
        try:
            same = root.read_json(CARD_FILE).get("fingerprint") == fp
        except (OSError, ValueError, AttributeError) as exc:
            raise GenerateError(f"output {cfg.output!r} holds a damaged {CARD_FILE} "
                                f"({type(exc).__name__}); pass overwrite=true to start again or "
                                f"choose another output") from None
        raise GenerateError(f"output {cfg.output!r} already holds a finished dataset "
                            f"({'made by this same config' if same else 'another config'}); "
                            f"pass overwrite=true to replace it or choose another output")
    if PLAN_FILE not in names:
        if names:
            raise GenerateError(f"output {cfg.output!r} holds part files but no {PLAN_FILE}; "
                                f"pass overwrite=true to start again")
        return None
    try:
        plan = root.read_json(PLAN_FILE)
        if not isinstance(plan, dict) or "fingerprint" not in plan:
            raise ValueError("no fingerprint")
        if plan["fingerprint"] == fp and not isinstance(plan.get("shards"), list):
            raise ValueError("no shard list")
    except (OSError, ValueError) as exc:
        # the plan is a pure function of the config and the sources: rebuild it; part files of
        # this config carry its fingerprint and are kept (complete_shards checks each one)
        print(f"generate: warning: {PLAN_FILE} in {cfg.output!r} is damaged "
              f"({type(exc).__name__}); planning again and keeping the intact part files",
              file=sys.stderr)
        return None
    if plan.get("fingerprint") != fp:
        old = plan.get("params", {})
        diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        raise GenerateError(f"output {cfg.output!r} holds an unfinished run with another config "
                            f"(differs in: {', '.join(diff)}); use the same config to resume it, "
                            f"or overwrite=true to start again")
    return plan


def is_finished(cfg: GenerateConfig) -> bool:
    """True when `cfg.output` holds the finished dataset of this very config (a pipeline may skip
    the stage then; `generate` itself refuses to touch it without overwrite=true)."""
    root = Root(cfg.output, cfg.storage)
    if CARD_FILE not in root.names():
        return False
    return root.read_json(CARD_FILE).get("fingerprint") == fingerprint(gen_params(cfg))


# ------------------------------------------------------------------------------------- probe

def probe_source(item: dict[str, Any], storage: dict[str, Any], max_pixels: int,
                 image_size: int) -> dict[str, Any]:
    """Ray Data map function: read and decode one source; a reject carries its reason."""
    out = {"source_id": item["source_id"], "uri": item["uri"], "width": 0, "height": 0,
           "note": "", "reason": ""}
    try:
        img, note = load_source(item["uri"], SimpleNamespace(**storage), max_pixels)
        out.update(width=int(img.shape[1]), height=int(img.shape[0]), note=note)
        check_size(img, image_size)
    except Rejected as exc:
        out["reason"] = str(exc)
    except Exception as exc:  # a decoder bug on one file must not sink the run either
        out["reason"] = f"unexpected error: {type(exc).__name__}: {exc}"
    return out


def probe(ray: Any, refs: list[SourceRef], cfg: GenerateConfig, storage: dict[str, Any],
          runtime_env: dict[str, Any] | None) -> list[dict[str, Any]]:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items([{"source_id": r.source_id, "uri": r.uri} for r in refs],
                             override_num_blocks=max(1, min(len(refs), 4 * cpus)))
    ds = ds.map(probe_source, fn_kwargs={"storage": storage, "max_pixels": cfg.max_pixels,
                                         "image_size": cfg.image_size},
                num_cpus=1, compute=ray.data.TaskPoolStrategy(size=cfg.workers),
                runtime_env=runtime_env)
    return sorted(ds.take_all(), key=lambda r: r["source_id"])


def build_plan(ray: Any, cfg: GenerateConfig, params: dict[str, Any], fp: str,
               storage: dict[str, Any], runtime_env: dict[str, Any] | None,
               refs: list[SourceRef]) -> dict[str, Any]:
    """`refs`: the sources `take_inputs` listed and checked before Ray started."""
    t0 = time.perf_counter()
    named = [r for r in refs if is_text(r.source_id) and is_text(r.uri)]
    rejects = [{"source_id": printable_name(r.source_id), "uri": printable_name(r.uri),
                "reason": "file name is not valid UTF-8 (ids and Parquet strings must be "
                          "text); rename the file"} for r in refs if r not in named]
    probed = probe(ray, named, cfg, storage, runtime_env) if named else []
    probed = [{**p, "width": int(p["width"]), "height": int(p["height"])} for p in probed]
    usable = [p for p in probed if not p["reason"]]
    rejects += [{"source_id": p["source_id"], "uri": p["uri"], "reason": p["reason"]}
                for p in probed if p["reason"]]
    rejects.sort(key=lambda r: r["source_id"])
    for p in usable:
        p["split"] = "train" if train_only(p["uri"]) else split_of(
            p["source_id"], cfg.val_fraction, cfg.test_fraction)
    try:
        crops = plan_crops({p["source_id"]: p["split"] for p in usable}, cfg.samples,
                           cfg.ood_fraction, cfg.variants_per_crop, cfg.seed)
    except PlanError as exc:
        for r in rejects:  # the reasons the message points at
            print(f"  rejected {r['source_id']}: {r['reason']}", file=sys.stderr)
        raise GenerateError(f"{exc}; rejected: {len(rejects)} of {len(refs)} sources") from None
    shards = plan_shards(crops, cfg.rows_per_shard)
    return {"format": 1, "fingerprint": fp, "params": params, "listed": len(refs),
            "sources": usable, "rejects": rejects,
            "shards": [{"name": shard_name(k), "rows": sum(c.variants for c in s),
                        "crops": [[c.source_id, c.crop, c.split, c.variants] for c in s]}
                       for k, s in enumerate(shards)],
            "probe_s": round(time.perf_counter() - t0, 3)}


# ------------------------------------------------------------------------------------ shards

def complete_shards(root: Root, plan: dict[str, Any]) -> set[str]:
    """Names of part files already written in full by this plan (a resumed run skips them)."""
    present = set(root.names())
    done = set()
    for s in plan["shards"]:
        if s["name"] in present:
            try:
                rows, fp = root.part_rows(s["name"])
            except Exception as exc:  # cut short by a killed process, or not Parquet at all
                print(f"generate: warning: part file {s['name']} is damaged "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); writing it "
                      f"again", file=sys.stderr)
                rows, fp = -1, ""
            if rows == s["rows"] and fp == plan["fingerprint"]:
                done.add(s["name"])
            else:  # cannot happen through write_rows; a foreign or damaged file is replaced
                root.remove(s["name"])
    return done


def run_shards(ray: Any, plan: dict[str, Any], todo: list[dict[str, Any]], cfg: GenerateConfig,
               storage: dict[str, Any], runtime_env: dict[str, Any] | None, done_rows: int,
               tracker: Any) -> list[dict[str, Any]]:
    uris = {p["source_id"]: p["uri"] for p in plan["sources"]}
    items = []
    for s in todo:
        spec = {"name": s["name"], "rows": s["rows"], "crops": s["crops"],
                "uris": {c[0]: uris[c[0]] for c in s["crops"]}, "params": plan["params"],
                "output": cfg.output, "storage": storage, "fingerprint": plan["fingerprint"]}
        items.append({"spec": json.dumps(spec)})
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(run_shard, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=cfg.workers),
                runtime_env=runtime_env)
    total = sum(s["rows"] for s in plan["shards"])
    out: list[dict[str, Any]] = []
    last_log = time.monotonic()
    with tqdm(total=total, initial=done_rows, unit="row", desc="generate", file=sys.stderr,
              disable=not cfg.progress, mininterval=2.0, smoothing=0.1) as bar:
        for r in ds.iter_rows():
            out.append(r)
            bar.update(r["rows"])
            if time.monotonic() - last_log > 10:
                rows_done = done_rows + sum(x["rows"] for x in out)
                tracker.log_metrics({"generate/rows_done": rows_done}, step=rows_done)
                last_log = time.monotonic()
    return out


# -------------------------------------------------------------------------------- card, preview

def write_card_and_preview(root: Root, cfg: GenerateConfig, plan: dict[str, Any],
                           timing: dict[str, Any], local_dir: Path) -> dict[str, Any]:
    table = read_table(cfg.output, columns=["sample_id", "source_id", "split", "annotation"],
                       storage=cfg.storage, allow_partial=True)
    ids = table.column("sample_id").to_pylist()
    if len(ids) != cfg.samples or len(set(ids)) != len(ids):
        raise GenerateError(f"output {cfg.output!r} holds {len(ids)} rows ({len(set(ids))} "
                            f"distinct ids), planned {cfg.samples}; pass overwrite=true")
    stats = dataset_stats(table)
    src_split: dict[str, int] = {}
    conversions: dict[str, int] = {}
    for p in plan["sources"]:
        src_split[p["split"]] = src_split.get(p["split"], 0) + 1
        if p["note"]:
            conversions[p["note"]] = conversions.get(p["note"], 0) + 1
    card = {
        "format": "dutrain-dataset-card/1", "generator_version": __version__,
        "fingerprint": plan["fingerprint"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": redacted(cfg), "columns": list(COLUMNS),
        "counts": {k: v for k, v in stats.items() if k != "value_histograms"},
        "value_histograms": stats["value_histograms"],
        "sources": {"listed": plan["listed"], "used": len(plan["sources"]),
                    "rejected": len(plan["rejects"]),
                    "per_split": {s: src_split[s] for s in ("train", "val", "test")
                                  if s in src_split},
                    "conversions": dict(sorted(conversions.items()))},
        "rejects": plan["rejects"],
        # license and author of every packaged photo the dataset used (photos.json has the rest)
        "attribution": photos.attribution([p["source_id"] for p in plan["sources"]]),
        "files": [{"name": s["name"], "rows": s["rows"]} for s in plan["shards"]],
        "timing": timing,
    }
    preview_rows: list[dict[str, Any]] = []
    want = preview_ids(table, cfg.preview_pairs)
    if want:
        ds = parquet_dataset(cfg.output, cfg.storage, allow_partial=True)
        picked = ds.to_table(columns=["sample_id", "split", "annotation", "clean", "degraded"],
                             filter=pads.field("sample_id").isin(want)).to_pylist()
        order = {sid: i for i, sid in enumerate(want)}
        preview_rows = sorted(picked, key=lambda r: order[r["sample_id"]])
    png = render_preview(preview_rows)
    text = json.dumps(card, indent=1)
    (local_dir / PREVIEW_FILE).write_bytes(png)
    (local_dir / CARD_FILE).write_text(text)
    root.write(PREVIEW_FILE, png)
    root.write(CARD_FILE, text.encode())  # last: its presence marks a finished dataset
    return card


# --------------------------------------------------------------------------------------- run

@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """Our own row-level progress bar replaces Ray Data's per-operator bars for this run."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = before


def generate(cfg: GenerateConfig, sources: list[SourceRef] | None = None) -> GenerateResult:
    """Write (or finish writing) the dataset of `cfg`; raises GenerateError with what to change.
    `sources`: `list_inputs(cfg)` when the caller has already listed them."""
    t_start = time.perf_counter()
    params = gen_params(cfg)
    fp = fingerprint(params)
    preflight.output_location("output", cfg.output, cfg.storage)
    with preflight.s3_errors("output", cfg.output):
        root = Root(cfg.output, cfg.storage)
        plan = prepare_output(root, cfg, params, fp)
    # sources are listed (a bad one refused) before Ray starts, once (a pipeline's preflight
    # hands its listing over); a resumed plan has its own list
    refs = (list_inputs(cfg) if sources is None else sources) if plan is None else None
    preflight.tracking(cfg.tracking)
    opts = s3_options(cfg.storage).get("client_kwargs", {})
    storage = {"endpoint_url": opts.get("endpoint_url"), "region": opts.get("region_name")}
    with stage_run(cfg, "generate") as tracker, ray_session(cfg.ray) as ray, \
            _quiet_ray_data(ray):
        tracker.set_tags({"dutrain.output": cfg.output, "dutrain.fingerprint": fp})
        # Ray Data retries a task lost with its worker or node without limit; a task that raises
        # fails the run, and running it again resumes (every shard write is atomic and idempotent)
        env = forwarded_env(ray)
        runtime_env = {"env_vars": env} if env else None
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        if nodes > 1 and not is_remote(cfg.output):
            print(f"generate: warning: output {cfg.output!r} is a local path on a {nodes}-node "
                  f"cluster; every node must see it at that path (a shared filesystem), else "
                  f"use s3://", file=sys.stderr)
        resumed = plan is not None
        if plan is None:
            plan = build_plan(ray, cfg, params, fp, storage, runtime_env, refs)
            root.write(PLAN_FILE, json.dumps(plan).encode())
        print(f"generate: {plan['listed']} sources listed, {len(plan['rejects'])} rejected, "
              f"{len(plan['shards'])} shards → {cfg.output}", file=sys.stderr)
        for r in plan["rejects"]:
            print(f"  rejected {r['source_id']}: {r['reason']}", file=sys.stderr)
        done = complete_shards(root, plan)
        todo = [s for s in plan["shards"] if s["name"] not in done]
        done_rows = sum(s["rows"] for s in plan["shards"] if s["name"] in done)
        t_gen = time.perf_counter()
        results = run_shards(ray, plan, todo, cfg, storage, runtime_env, done_rows, tracker) \
            if todo else []
        gen_s = time.perf_counter() - t_gen
        root.remove(TMP_DIR)
        missing = [s["name"] for s in plan["shards"]
                   if s["name"] not in complete_shards(root, plan)]
        if missing:
            raise GenerateError(f"{len(missing)} part files missing after the run "
                                f"({', '.join(missing[:3])}…); run again to finish them")
        rows_written = sum(r["rows"] for r in results)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        timing = {"resumed": resumed, "probe_s": None if resumed else plan["probe_s"],
                  "generate_s": round(gen_s, 3), "rows_written": rows_written,
                  "shards_written": len(results), "shards_skipped": len(done),
                  "rows_per_s": round(rows_written / gen_s, 2) if rows_written else None,
                  "cluster_cpus": cpus,
                  "rows_per_s_per_cpu": (round(rows_written / gen_s / cpus, 2) if rows_written
                                         else None),
                  "task_s_per_row": round(sum(r["seconds"] for r in results) / rows_written, 5)
                  if rows_written else None,
                  "task_cpu_s_per_row": round(sum(r["cpu_seconds"] for r in results)
                                              / rows_written, 5) if rows_written else None,
                  "nodes_used": len({r["node"] for r in results})}
        with tempfile.TemporaryDirectory() as tmp:
            timing["wall_s"] = round(time.perf_counter() - t_start, 3)
            card = write_card_and_preview(root, cfg, plan, timing, Path(tmp))
            counts = card["counts"]
            metrics = {"generate/rows": counts["rows"], "generate/rows_written": rows_written,
                       "generate/shards_skipped": len(done),
                       "generate/sources_used": len(plan["sources"]),
                       "generate/sources_rejected": len(plan["rejects"]),
                       "generate/generate_s": gen_s, "generate/wall_s": timing["wall_s"],
                       "generate/rows_per_s": timing["rows_per_s"],
                       "generate/rows_per_s_per_cpu": timing["rows_per_s_per_cpu"]}
            metrics |= {f"generate/rows/{s}": n for s, n in counts["per_split"].items()}
            tracker.log_metrics(metrics, step=counts["rows"])
            tracker.log_artifact(Path(tmp) / CARD_FILE)
            tracker.log_artifact(Path(tmp) / PREVIEW_FILE)
    print(f"generate: {counts['rows']} rows ({rows_written} written now, {len(done)} shards "
          f"kept) in {timing['wall_s']:.1f} s → {cfg.output}", file=sys.stderr)
    return GenerateResult(cfg.output, counts["rows"], rows_written, len(done), card)


def run(cfg: GenerateConfig, sources: list[SourceRef] | None = None) -> int:
    """CLI runner: 0 on success; a run that cannot start or finish raises GenerateError (a
    UserError: one line, exit 2, printed by the CLI). `sources`: as `generate`."""
    generate(cfg, sources)
    return 0
