"""`dutrain restore`: images + annotations (given, true or predicted) → restored images, a
before/after grid and, on a dataset split, PSNR/SSIM against clean for three annotations:

- identity: no restoration (the degraded image itself),
- oracle: the true annotation of the sample,
- predicted: the annotation a VLM or baseline read off the degraded image (`model=`), or the
  one given in a file (`annotation=`).

Metric keys (docs/design.md §8): ``{split}/psnr/{kind}`` and ``{split}/ssim/{kind}``, and per type
``{split}/psnr/{kind}/{type}``; a sample counts for every type in its chain, an empty chain as
``clean``. PSNR of an exact copy is capped at `dutrain.evaluate.quality.PSNR_CAP` dB so means
stay finite.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from dutrain.config.openai import PREFIX as OPENAI_PREFIX
from dutrain.config.restore import RestoreConfig
from dutrain.errors import UserError
from dutrain.evaluate.quality import psnr, ssim
from dutrain.io.images import Rejected, load_image_file, printable_name
from dutrain.schema import CLEAN, TYPES, canonical_json, canonicalize, parse_answer, types_of
from dutrain.tracking import stage_run

from .classical import restore as restore_classical

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: decompression-bomb guard (generate's `max_pixels` default)
MAX_PIXELS = 100_000_000
KINDS = ("identity", "oracle", "predicted", "controlled", "oracle_type", "oracle_values")


@dataclass
class Item:
    name: str  # file name or sample_id
    degraded: np.ndarray
    clean: np.ndarray | None = None
    true: dict[str, Any] | None = None
    predicted: dict[str, Any] | None = None
    completion: str | None = None
    restored: dict[str, np.ndarray] = field(default_factory=dict)


# ------------------------------------------------------------------------------------- inputs

def read_image(path: Path) -> np.ndarray:
    """A user's image file decoded by the one loader every verb uses (`dutrain.io.images`:
    16-bit keeps the high byte, grey → RGB, alpha on white …); raises Rejected with the reason."""
    return load_image_file(path, MAX_PIXELS)[0]


def load_items(cfg: RestoreConfig, rejected: list[dict[str, str]] | None = None) -> list[Item]:
    """The images to restore: a dataset split, a folder of images or one image file.

    A folder's unreadable files go to `rejected` ({"image", "reason"}) and the rest are restored;
    a UserError when no image could be read."""
    if cfg.split is not None:
        from dutrain.io.dataset import decode_png, read_table
        rows = read_table(cfg.input, [cfg.split], ["sample_id", "degraded", "clean", "annotation"],
                          cfg.limit, cfg.storage).to_pylist()
        if not rows:
            raise UserError(f"dataset '{cfg.input}' has no rows in split '{cfg.split}'")
        return [Item(r["sample_id"], decode_png(r["degraded"]), decode_png(r["clean"]),
                     canonicalize(json.loads(r["annotation"]))) for r in rows]
    src = Path(cfg.input)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"folder '{src}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif src.is_file():
        files = [src]
    else:
        raise UserError(f"input '{cfg.input}' is neither an image file nor a folder "
                        f"(a dataset root needs split=...)")
    items, bad = [], []
    for p in files[:cfg.limit]:
        name = printable_name(p.name)
        try:
            items.append(Item(name, read_image(p)))
        except Rejected as exc:
            bad.append({"image": name, "reason": str(exc)})
    if rejected is not None:
        rejected.extend(bad)
    if not items:
        raise UserError(f"none of the {len(bad)} image(s) in '{cfg.input}' could be read: "
                        + "; ".join(f"{b['image']}: {b['reason']}" for b in bad[:3])
                        + (" …" if len(bad) > 3 else ""))
    return items


def _annotation_of(obj: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, str | None]:
    """(annotation, completion) of one line: 'annotation' (object or JSON text) or 'completion'."""
    if "annotation" in obj:
        ann = obj["annotation"]
        try:
            return canonicalize(json.loads(ann) if isinstance(ann, str) else ann), None
        except ValueError as exc:
            raise UserError(f"{where}: bad annotation: {exc}") from None
    if isinstance(obj.get("completion"), str):
        return parse_answer(obj["completion"]).annotation, obj["completion"]
    raise UserError(f"{where}: needs 'annotation' (an object) or 'completion' (model text)")


def given_annotations(cfg: RestoreConfig, items: list[Item]) -> None:
    """Fill `predicted` from `cfg.annotation`: a .json file (one annotation for every image) or
    a .jsonl file (one line per image, matched by file name, stem or sample_id)."""
    path = Path(str(cfg.annotation))
    if not path.is_file():
        raise UserError(f"annotation file '{path}' does not exist")
    if path.suffix.lower() != ".jsonl":
        try:
            ann = canonicalize(json.loads(path.read_text()))
        except ValueError as exc:
            raise UserError(f"{path}: bad annotation: {exc}") from None
        for it in items:
            it.predicted = ann
        return
    by_name: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{no}: not JSON ({exc})") from None
        key = obj.get("sample_id", obj.get("image")) if isinstance(obj, dict) else None
        if not isinstance(key, str):
            raise UserError(f"{path}:{no}: needs a string 'image' or 'sample_id'")
        by_name.setdefault(key, _annotation_of(obj, f"{path}:{no}"))
        by_name.setdefault(Path(key).stem, by_name[key])
    missing = [it.name for it in items if it.name not in by_name
               and Path(it.name).stem not in by_name]
    if missing:
        raise UserError(f"{path} has no annotation for {len(missing)} image(s), e.g. "
                        f"{missing[:3]}")
    for it in items:
        it.predicted, it.completion = by_name.get(it.name) or by_name[Path(it.name).stem]


def predicted_completions(cfg: RestoreConfig, items: list[Item]) -> list[str]:
    """Completions of `cfg.model` for every item: a baseline, or a VLM served by the shared vLLM
    engine wrapper in Ray actors (`dutrain.evaluate.generate`)."""
    if cfg.model in ("baseline:prior", "baseline:classical"):
        from dutrain.evaluate.baselines import fit_baseline
        b = fit_baseline(cfg.model, str(cfg.calibration or cfg.input), cfg.calibration_samples,
                         cfg.storage)
        return b.complete([it.degraded for it in items])
    import io

    pngs = []
    for it in items:
        buf = io.BytesIO()
        Image.fromarray(it.degraded).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    if str(cfg.model).startswith(OPENAI_PREFIX):
        client = _openai_client(cfg)
        client.check()
        # no answer (an error, the budget) → "" : unparsed, restored as identity like any
        # unreadable completion
        return [r.completion or "" for r in client.complete(pngs)]
    from dutrain.evaluate.generate import vllm_completions
    from dutrain.models import resolve_model
    from dutrain.runtime.cluster import ray_session
    model_dir = str(resolve_model(str(cfg.model), storage=cfg.storage))
    with ray_session(cfg.ray):
        texts, _ = vllm_completions(model_dir, pngs, cfg.generation)
    return texts


def _openai_client(cfg: RestoreConfig) -> Any:
    from dutrain.evaluate.openai_client import OpenAIClient
    cache = cfg.openai.cache or str(Path(cfg.output) / "openai_cache")
    return OpenAIClient(str(cfg.model), cfg.openai, cfg.generation, cache)


# -------------------------------------------------------------------------------- restoration

Restorer = Callable[[np.ndarray, dict[str, Any]], np.ndarray]


def restorer(cfg: RestoreConfig) -> Restorer:
    """The backend named by `restore.backend` as image, annotation → image."""
    b = cfg.restore
    if b.backend == "classical":
        return restore_classical
    from .ddnm import load_diffusion, restore_ddnm
    model = load_diffusion(str(b.model), b.device, cfg.storage)
    return lambda img, ann: restore_ddnm(img, ann, model, b.steps, b.eta, b.seed, b.eps)


def restoration_metrics(split: str, items: Iterable[Item]) -> dict[str, float]:
    """Mean PSNR/SSIM per kind, overall and per type (see module doc)."""
    sums: dict[str, list[float]] = {}
    for it in items:
        if it.clean is None:
            continue
        groups = [CLEAN] if not it.true or not it.true["degradations"] else types_of(it.true)
        for kind, img in it.restored.items():
            p, s = psnr(it.clean, img), ssim(it.clean, img)
            for key, v in ((f"{split}/psnr/{kind}", p), (f"{split}/ssim/{kind}", s)):
                sums.setdefault(key, []).append(v)
                for g in groups:
                    sums.setdefault(f"{key}/{g}", []).append(v)
    return {k: float(np.mean(v)) for k, v in sorted(sums.items())}


def type_counts(items: Iterable[Item]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for it in items:
        for g in ([CLEAN] if not it.true or not it.true["degradations"] else types_of(it.true)):
            counts[g] = counts.get(g, 0) + 1
    return counts


# ------------------------------------------------------------------------------------- outputs

def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)


def _label(ann: dict[str, Any] | None) -> str:
    if ann is None:
        return "unparsed"
    return "+".join(types_of(ann)) or CLEAN


def write_grid(items: list[Item], path: Path, rows: int) -> None:
    """A before/after grid: degraded | restored (each kind) | clean, one row per image (spread
    evenly over the items), column names on top, PSNR and annotated types under each image."""
    pick = sorted({int(i) for i in np.linspace(0, len(items) - 1, min(rows, len(items)))})
    shown = [items[i] for i in pick]
    kinds = [k for k in ("predicted", "controlled", "oracle")
             if any(k in it.restored for it in shown)]
    cols = ["degraded", *kinds] + (["clean"] if any(it.clean is not None for it in shown) else [])
    side = max(max(it.degraded.shape[:2]) for it in shown)
    cell = min(max(side, 96), 192) + 4
    band = 14
    grid = Image.new("RGB", (cell * len(cols), band + (cell + band) * len(shown)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(cols):
        draw.text((c * cell + 2, 1), name, fill="black")
    for r, it in enumerate(shown):
        y0 = band + r * (cell + band)
        for c, name in enumerate(cols):
            img = {"degraded": it.degraded, "clean": it.clean}.get(name, it.restored.get(name))
            if img is None:
                continue
            thumb = Image.fromarray(img)
            thumb.thumbnail((cell - 4, cell - 4))
            grid.paste(thumb, (c * cell + 2, y0))
            note = {"predicted": _label(it.predicted), "oracle": _label(it.true),
                    "degraded": _label(it.true) if it.true is not None else it.name}.get(name, "")
            if it.clean is not None and name != "clean":
                img_psnr = psnr(it.clean, img)
                note = f"{img_psnr:.1f} dB {note}"
            draw.text((c * cell + 2, y0 + cell - 3), note[: cell // 6], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def markdown_table(split: str, metrics: dict[str, float], counts: dict[str, int]) -> str:
    kinds = [k for k in KINDS if f"{split}/psnr/{k}" in metrics]
    head = "| type | n | " + " | ".join(f"PSNR {k}" for k in kinds) + " | " + \
        " | ".join(f"SSIM {k}" for k in kinds) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(kinds))]
    for g in ["all", CLEAN, *TYPES]:
        suffix = "" if g == "all" else f"/{g}"
        if f"{split}/psnr/identity{suffix}" not in metrics:
            continue
        n = counts.get("_total" if g == "all" else g, 0)
        cells = [f"{metrics.get(f'{split}/psnr/{k}{suffix}', float('nan')):.2f}" for k in kinds]
        cells += [f"{metrics.get(f'{split}/ssim/{k}{suffix}', float('nan')):.3f}" for k in kinds]
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- run

def restore_all(cfg: RestoreConfig) -> dict[str, Any]:
    """Do the work of `dutrain restore` and write every output; returns metrics and paths."""
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rejected: list[dict[str, str]] = []
    items = load_items(cfg, rejected)
    notes: list[str] = []
    for b in rejected:
        print(f"dutrain restore: warning: skipped {b['image']}: {b['reason']}", file=sys.stderr)
    if rejected:
        notes.append(f"{len(rejected)} image(s) could not be read and were skipped (see "
                     f"rejected.jsonl): " + ", ".join(b["image"] for b in rejected[:5])
                     + (" …" if len(rejected) > 5 else ""))
    with open(out / "rejected.jsonl", "w") as f:
        for b in rejected:
            f.write(json.dumps(b) + "\n")
    ctl: Any = None  # the controlled plan (restore.plan=controlled)
    if cfg.annotation is not None:
        given_annotations(cfg, items)
    elif cfg.restore.plan == "controlled":
        from .controller import prepare
        ctl = prepare(cfg, items, out)  # classical-baseline predictions + thresholds
    elif cfg.model is not None:
        for it, text in zip(items, predicted_completions(cfg, items)):
            it.completion = text
            it.predicted = parse_answer(text).annotation
    unparsed = sum(1 for it in items if it.predicted is None and (cfg.annotation or cfg.model))
    if unparsed:
        notes.append(f"{unparsed} of {len(items)} predicted answers did not parse; those images "
                     f"are left as they are (identity)")
    fn = restorer(cfg)
    has_pred = cfg.annotation is not None or cfg.model is not None
    t0 = time.perf_counter()
    n_restores = 0
    for it in items:
        if it.clean is not None:
            it.restored["identity"] = it.degraded
        if it.true is not None:
            it.restored["oracle"] = fn(it.degraded, it.true)
            n_restores += 1
        if has_pred:
            it.restored["predicted"] = (fn(it.degraded, it.predicted) if it.predicted
                                        else it.degraded)
            n_restores += 1
    seconds = time.perf_counter() - t0
    diag_filled = (diagnose(cfg, items, ctl, fn) if cfg.restore.diagnose and has_pred
                   else None)
    if ctl is not None:
        for it in items:
            it.restored["controlled"] = ctl.restore(it.name, it.degraded, it.predicted)
    main = "controlled" if ctl is not None else "predicted" if has_pred else "oracle"
    (out / "restored").mkdir(exist_ok=True)
    for it in items:
        Image.fromarray(it.restored[main]).save(out / "restored" / f"{_safe(it.name)}.png")
    with open(out / "annotations.jsonl", "w") as f:
        for it in items:
            row: dict[str, Any] = {"image": it.name}
            if it.true is not None:
                row["true"] = json.loads(canonical_json(it.true))
            if has_pred:
                row["predicted"] = (json.loads(canonical_json(it.predicted)) if it.predicted
                                    else None)
            if it.completion is not None:
                row["completion"] = it.completion
            f.write(json.dumps(row) + "\n")
    write_grid(items, out / "grid.png", cfg.grid)
    metrics: dict[str, float] = {"restore/seconds_per_image": seconds / max(n_restores, 1)}
    report = ""
    if cfg.split is not None:
        metrics.update(restoration_metrics(cfg.split, items))
        ctl_section = ""
        if ctl is not None:
            from .controller import report as controller_report
            ctl_metrics, ctl_section = controller_report(cfg.split, items, ctl, out)
            metrics.update(ctl_metrics)
        counts = {**type_counts(items), "_total": len(items)}
        diag_lines: list[str] = []
        if diag_filled is not None:
            from .diagnose import attribution
            gap_metrics, diag_lines = attribution(cfg.split, metrics, counts)
            metrics.update(gap_metrics)
            metrics[f"{cfg.split}/oracle_type/values_filled"] = diag_filled
            diag_lines += ["", f"{diag_filled:.1%} of the true steps were not named by the "
                               f"predictor; oracle_type takes their values from the classical "
                               f"estimators", ""]
        report = "\n".join([f"# Restoration: {cfg.input} / {cfg.split}", "",
                            f"backend: {cfg.restore.backend}; predicted by: "
                            f"{cfg.model or cfg.annotation or '-'}; samples: {len(items)}", "",
                            markdown_table(cfg.split, metrics, counts), "",
                            *diag_lines, ctl_section, *[f"note: {n}" for n in notes]])
        (out / "report.md").write_text(report + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return {"metrics": metrics, "report": report, "notes": notes, "output": out,
            "count": len(items), "rejected": rejected}


def diagnose(cfg: RestoreConfig, items: list[Item], ctl: Any, fn: Restorer) -> float:
    """Restore every item with a true annotation twice more (`restore.diagnose`): the true types
    with the predicted values (``oracle_type``) and the predicted types with the true values
    (``oracle_values``; see `diagnose`). Values of a true type the predictor did not name come
    from the classical estimators. Returns the share of true steps so filled."""
    from dutrain.evaluate.baselines import ClassicalBaseline, fit_baseline

    from .controller import reading
    from .diagnose import filled_share, oracle_type, oracle_values
    base = (ClassicalBaseline(ctl.calibration) if ctl is not None else
            fit_baseline("baseline:classical", str(cfg.calibration or cfg.input),
                         cfg.calibration_samples, cfg.storage))
    filled, steps = [], []
    for it in items:
        if it.true is None:
            continue
        cache: dict[str, Any] = {}

        def fill(t: str, it: Item = it, cache: dict[str, Any] = cache) -> dict[str, Any]:
            if "feats" not in cache:  # measured once per image, and only when needed
                known = ctl.feats.get(it.name) if ctl is not None else None
                cache["feats"] = known or reading(it.degraded)
            return base.params_for(t, cache["feats"])

        ann, k = oracle_type(it.true, it.predicted, fill)
        filled.append(k)
        steps.append(len(it.true["degradations"]))
        it.restored["oracle_type"] = fn(it.degraded, ann)
        it.restored["oracle_values"] = fn(it.degraded, oracle_values(it.true, it.predicted))
    return filled_share(filled, steps)


def preflight_restore(cfg: RestoreConfig) -> None:
    """Inputs, output and tracking server, checked before any model starts (UserError)."""
    from dutrain.runtime import preflight
    cfg.check_inputs()
    if cfg.split is not None:
        preflight.dataset("input", cfg.input, cfg.storage)
    elif not Path(str(cfg.input)).expanduser().exists():
        raise preflight.PreflightError(f"bad value for 'input': '{cfg.input}' does not exist "
                                       f"(allowed: an image file, a folder of images, or a "
                                       f"dataset root with split=...)")
    if cfg.annotation is not None:
        preflight.existing_file("annotation", cfg.annotation, "a .json/.jsonl file")
    if cfg.model and cfg.model.startswith("baseline:") and cfg.calibration:
        preflight.dataset("calibration", cfg.calibration, cfg.storage)
    if cfg.model and cfg.model.startswith(OPENAI_PREFIX):
        _openai_client(cfg).check()  # reachable, key accepted, model known
    else:
        preflight.model("model", cfg.model, cfg.storage)
    if cfg.restore.thresholds:
        preflight.existing_file("restore.thresholds", cfg.restore.thresholds,
                                "a thresholds.json of a controlled run")
    if cfg.restore.model and "://" not in str(cfg.restore.model):
        preflight.existing_dir("restore.model", cfg.restore.model, what="a diffusers UNet folder")
    preflight.output_location("output", cfg.output)
    preflight.tracking(cfg.tracking)


def run(cfg: RestoreConfig) -> int:
    """The `dutrain restore` runner: 0, or a UserError (exit 2) when the inputs are unusable."""
    preflight_restore(cfg)
    return _run(cfg)


def _run(cfg: RestoreConfig) -> int:
    system = cfg.model or (f"annotation:{cfg.annotation}" if cfg.annotation else "oracle")
    with stage_run(cfg, "restore", params={"model": system}) as run:
        res = restore_all(cfg)
        out: Path = res["output"]
        run.log_metrics(res["metrics"])
        for name in ("grid.png", "metrics.json", "annotations.jsonl") + \
                (("report.md",) if res["report"] else ()) + \
                (("rejected.jsonl",) if res["rejected"] else ()):
            run.log_artifact(out / name)
        for name in ("thresholds.json", "judge.json", "controller.jsonl", "risk_coverage.json",
                     "risk_coverage.png"):  # restore.plan=controlled
            if cfg.restore.plan == "controlled" and (out / name).is_file():
                run.log_artifact(out / name)
        run.set_tags({"dutrain.model": system, "dutrain.restore.backend": cfg.restore.backend})
    text = res["report"] or "\n".join(f"note: {n}" for n in res["notes"])
    if text:
        print(text)
    print(f"restored {res['count']} image(s) → {out / 'restored'}  grid: {out / 'grid.png'}"
          + (f"  mlflow run: {run.run_id}" if run.active else ""))
    if res["rejected"]:
        print(f"dutrain restore: warning: {len(res['rejected'])} image(s) skipped, "
              f"{res['count']} restored; reasons in {out / 'rejected.jsonl'}", file=sys.stderr)
    return 0
