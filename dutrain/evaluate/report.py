"""Eval outputs: the terminal summary, the Markdown report and the plots (matplotlib, Agg)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dutrain.schema import TAXONOMY

from .metrics import STRENGTH_BANDS, VISIBLE_PSNR, Scored, confusion_labels

SUMMARY_COLUMNS = (("n", "n", "{:.0f}"), ("format_valid", "format", "{:.3f}"),
                   ("type_exact", "type=", "{:.3f}"), ("type_f1", "type F1", "{:.3f}"),
                   ("key_acc", "key", "{:.3f}"), ("value_nmae", "nMAE", "{:.3f}"),
                   ("value_within_1_step", "≤1 step", "{:.3f}"),
                   ("reward/total", "total", "{:.3f}"))


def _cell(metrics: Mapping[str, float], key: str, fmt: str) -> str:
    v = metrics.get(key)
    return "–" if v is None else fmt.format(v)


def summary_table(metrics: Mapping[str, float], splits: Sequence[str], system: str) -> str:
    """One screen: a row per split with the headline metrics."""
    head = ["split", *[h for _, h, _ in SUMMARY_COLUMNS]]
    rows = [[s, *[_cell(metrics, f"{s}/{k}", f) for k, _, f in SUMMARY_COLUMNS]] for s in splits]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([f"eval of {system}", line(head), line(["-" * w for w in widths]),
                      *[line(r) for r in rows]])


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


#: rows of the per-source table (the hardest sources first)
MAX_SOURCE_ROWS = 20


def markdown_report(system: str, dataset: str, splits: Sequence[str], metrics: Mapping[str, float],
                    confusions: Mapping[str, list[list[int]]], notes: Sequence[str],
                    plots: Mapping[str, Sequence[str]],
                    sources: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> str:
    """The report: headline table, per-type F1 and recall by strength, per-key nMAE, confusion
    matrices, per-source accuracy (`by_source`, when more than one source), notes, plots."""
    md = [f"# Evaluation of `{system}`", "",
          f"Dataset: `{dataset}`; splits: {', '.join(splits)}.", "",
          "## Summary", "",
          _md_table(["split", *[h for _, h, _ in SUMMARY_COLUMNS]],
                    [[s, *[_cell(metrics, f"{s}/{k}", f) for k, _, f in SUMMARY_COLUMNS]]
                     for s in splits]),
          "", "`format` = format_valid, `type=` = type_exact, `nMAE` = value_nmae "
              "(|error| / train-range width, capped at 1), `≤1 step` = value_within_1_step.", ""]
    types = sorted({k.split("/", 2)[2] for k in metrics if "/type_f1/" in k},
                   key=lambda t: (t != "clean", list(TAXONOMY).index(t) if t in TAXONOMY else -1))
    if types:
        md += ["## Per type: F1 and recall (the type's accuracy)", "",
               _md_table(["type", *[f"{s} {m}" for s in splits for m in ("F1", "recall")]],
                         [[t, *[_cell(metrics, f"{s}/type_{m}/{t}", "{:.3f}")
                                for s in splits for m in ("f1", "recall")]] for t in types]), ""]
    banded = [t for t in types if any(f"{s}/type_recall_{b}/{t}" in metrics
                                      for s in splits for b in STRENGTH_BANDS)]
    if banded:
        md += ["## Recall by strength (thirds of the type's train range, mildest first)", "",
               _md_table(["type", *[f"{s} {b}" for s in splits for b in STRENGTH_BANDS]],
                         [[t, *[_cell(metrics, f"{s}/type_recall_{b}/{t}", "{:.2f}")
                                for s in splits for b in STRENGTH_BANDS]] for t in banded]
                         + [["all types", *[_cell(metrics, f"{s}/type_recall_{b}", "{:.2f}")
                                            for s in splits for b in STRENGTH_BANDS]]]),
               "", "A type missed mostly in its mild third is one the image barely shows; "
                   "misses in the strong third are the model's.", ""]
    seen = [s for s in splits if f"{s}/visible_share" in metrics]
    if seen:
        md += [f"## Visible or faint (PSNR against the clean image below {VISIBLE_PSNR:g} dB or "
               "not; degraded images only)", "",
               _md_table(["split", "visible share", "type= visible", "type= faint"],
                         [[s, _cell(metrics, f"{s}/visible_share", "{:.2f}"),
                           _cell(metrics, f"{s}/type_exact_visible", "{:.3f}"),
                           _cell(metrics, f"{s}/type_exact_faint", "{:.3f}")] for s in seen]), ""]
    keys = sorted({k.split("/", 2)[2] for k in metrics if "/value_nmae/" in k},
                  key=lambda tk: [f"{d.type}.{p.key}" for d in TAXONOMY.values()
                                  for p in d.params].index(tk))
    if keys:
        md += ["## Value nMAE per key", "",
               _md_table(["key", *splits], [[k, *[_cell(metrics, f"{s}/value_nmae/{k}", "{:.3f}")
                                                 for s in splits]] for k in keys]), ""]
    rows_l, cols_l = confusion_labels()
    for s in splits:
        m = confusions.get(s)
        if not m:
            continue
        used_r = [i for i, r in enumerate(m) if any(r)]
        used_c = [j for j in range(len(cols_l)) if any(row[j] for row in m)]
        md += [f"## Type confusion ({s}): rows true, columns predicted", "",
               _md_table(["true \\ pred", *[cols_l[j] for j in used_c]],
                         [[rows_l[i], *[str(m[i][j]) for j in used_c]] for i in used_r]), ""]
    for s in splits:
        per = (sources or {}).get(s) or {}
        if len(per) < 2:
            continue
        hardest = sorted(per, key=lambda k: (per[k]["type_exact"], k))[:MAX_SOURCE_ROWS]
        shown = ("" if len(per) <= MAX_SOURCE_ROWS
                 else f", the {MAX_SOURCE_ROWS} hardest of {len(per)}")
        md += [f"## Per source image ({s}{shown})", "",
               _md_table(["source", "n", "type=", "nMAE"],
                         [[k, f"{per[k]['n']:.0f}", f"{per[k]['type_exact']:.3f}",
                           _cell(per[k], "value_nmae", "{:.3f}")] for k in hardest]), ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    for s in splits:
        for p in plots.get(s, []):
            md += [f"![{Path(p).stem}]({p})", ""]
    return "\n".join(md)


def _plt():
    # lazy: matplotlib is slow to import and only the plots need it
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(matrix: list[list[int]], split: str, path: Path) -> None:
    plt = _plt()
    rows_l, cols_l = confusion_labels()
    m = np.array(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols_l)), cols_l, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows_l)), rows_l, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"type confusion ({split}); colour = row share")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _by_key(scored: Sequence[Scored]) -> dict[str, list[tuple[float, float]]]:
    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in scored:
        for m in s.matches:
            if m.pred is not None:
                pts[f"{m.type}.{m.key}"].append((m.true, m.pred))
    order = [f"{d.type}.{p.key}" for d in TAXONOMY.values() for p in d.params]
    return {k: pts[k] for k in order if k in pts}


def plot_values(scored: Sequence[Scored], split: str, path_values: Path, path_errors: Path) -> bool:
    """Predicted vs. true value per key, and normalized signed error vs. true value per key.

    Returns False (and draws nothing) when no key was matched.
    """
    plt = _plt()
    pts = _by_key(scored)
    if not pts:
        return False
    n = len(pts)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    for path, kind in ((path_values, "values"), (path_errors, "errors")):
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
        for ax, (k, xy) in zip(axes.flat, pts.items()):
            t, key = k.split(".", 1)
            p = TAXONOMY[t].param(key)
            true = [a for a, _ in xy]
            pred = [b for _, b in xy]
            if kind == "values":
                lo, hi = p.valid
                ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
                ax.scatter(true, pred, s=10, alpha=0.7)
                ax.set_ylabel("predicted")
            else:
                err = [(b - a) / p.width if not p.period else
                       (((b - a + p.period / 2) % p.period) - p.period / 2) / p.width
                       for a, b in xy]
                ax.axhline(0, color="grey", lw=0.8)
                ax.scatter(true, err, s=10, alpha=0.7, color="tab:red")
                ax.set_ylabel("error / width")
            ax.set_xlabel("true")
            ax.set_title(f"{k} (n={len(xy)})", fontsize=9)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"{'predicted vs. true' if kind == 'values' else 'error vs. true'} ({split})")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
    return True


def write_plots(scored_by_split: Mapping[str, Sequence[Scored]],
                confusions: Mapping[str, list[list[int]]], out: Path) -> dict[str, list[str]]:
    """All plots under `out/plots`; returns split → paths relative to `out`."""
    d = out / "plots"
    d.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    for split, scored in scored_by_split.items():
        files = []
        plot_confusion(confusions[split], split, d / f"confusion_{split}.png")
        files.append(f"plots/confusion_{split}.png")
        if plot_values(scored, split, d / f"values_{split}.png", d / f"errors_{split}.png"):
            files += [f"plots/values_{split}.png", f"plots/errors_{split}.png"]
        made[split] = files
    return made


def notes_for(info: Mapping[str, Any]) -> list[str]:
    """Human lines about what did not fit (unknown ids, malformed lines, missing samples)."""
    out = []
    if info.get("unknown_ids"):
        ids = info["unknown_ids"]
        out.append(f"{len(ids)} prediction(s) name sample ids not in the dataset (ignored): "
                   + ", ".join(f"`{i}`" for i in ids[:10]) + (" …" if len(ids) > 10 else ""))
    if info.get("malformed"):
        bad = info["malformed"]
        out.append(f"{len(bad)} malformed prediction line(s) (their samples score as format "
                   "failures): " + "; ".join(f"line {n}: {why}" for n, why in bad[:10])
                   + (" …" if len(bad) > 10 else ""))
    if info.get("duplicates"):
        out.append(f"{len(info['duplicates'])} duplicate sample id(s); the first line was used")
    if info.get("other_splits"):
        out.append(f"{info['other_splits']} prediction(s) for samples of splits not evaluated")
    for split, n in (info.get("missing") or {}).items():
        if n:
            out.append(f"{split}: {n} sample(s) had no prediction (scored as format failures)")
    return out
