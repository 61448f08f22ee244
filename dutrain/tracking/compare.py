"""`dutrain compare`: select MLflow runs, tabulate the params that differ and chosen metrics.

Runs are selected by id or name (`runs`), by an MLflow filter string (`filter`) and by tags
(`tags`, KEY=VALUE); given selectors all apply; with none, the newest `eval` runs of the
experiment. The table goes
to the terminal, `compare.md`, `compare.csv` and a chart `compare.png`, all logged as artifacts
of a `compare` run (tag dutrain.stage=compare, tag dutrain.compared_runs).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dutrain.errors import UserError
from dutrain.runtime import preflight
from dutrain.schema import SPLITS

from .mlflow_run import stage_run, tracking_uri

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CompareError(UserError, ValueError):
    """A selection that matches nothing usable (the message names the selector)."""


#: metric names preferred when none are chosen (docs/design.md §8; after any split prefix), in
#: order
HEADLINE = ("type_f1", "type_exact", "format_valid", "key_acc", "value_nmae", "value_within_1_step",
            "reward/total", "psnr/predicted", "rl/kl", "loss")


@dataclass
class Comparison:
    runs: list[Any]  # mlflow.entities.Run, oldest first (or as sorted by `sorted_by`)
    params: list[str]  # param keys shown
    metrics: list[str]  # metric keys shown
    show_status: bool = False  # a status column (FINISHED, FAILED, ...): a sweep's failed trials

    def _lead(self, r: Any) -> list[str]:
        return [r.data.tags.get("dutrain.stage", "")] + ([r.info.status] if self.show_status
                                                          else [])

    def header(self) -> list[str]:
        return ["run", "id", "stage", *(["status"] if self.show_status else []), *self.params,
                *self.metrics]

    def rows(self) -> list[list[str]]:
        out = []
        for r in self.runs:
            p, m = r.data.params, r.data.metrics
            out.append([r.info.run_name or "", r.info.run_id[:8], *self._lead(r),
                        *[p.get(k, "–") for k in self.params],
                        *[_num(m.get(k)) for k in self.metrics]])
        return out

    def markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                  for row in self.rows()]
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run", "run_id", *self.header()[2:]])
        for r in self.runs:
            w.writerow([r.info.run_name or "", r.info.run_id, *self._lead(r),
                        *[r.data.params.get(k, "") for k in self.params],
                        *[r.data.metrics.get(k, "") for k in self.metrics]])
        return buf.getvalue()

    def text(self) -> str:
        table = [self.header(), *self.rows()]
        widths = [min(40, max(len(row[i]) for row in table)) for i in range(len(table[0]))]

        def fmt(row: Sequence[str]) -> str:
            return "  ".join(c[:w].ljust(w) for c, w in zip(row, widths))

        return "\n".join([fmt(table[0]), fmt(["-" * w for w in widths]), *map(fmt, table[1:])])

    def sorted_by(self, metric: str, mode: str = "max") -> "Comparison":
        """The same comparison, best run first by `metric` (`mode` max or min); runs without
        the metric (failed ones) last."""
        sign = -1.0 if mode == "max" else 1.0

        def key(r: Any) -> tuple[int, float]:
            v = r.data.metrics.get(metric)
            return (1, 0.0) if v is None or v != v else (0, sign * float(v))

        return Comparison(sorted(self.runs, key=key), self.params, self.metrics, self.show_status)

    def write(self, out: Path, stem: str = "compare", chart: str = "bar",
              title: str = "dutrain compare") -> list[Path]:
        """`stem`.md, `stem`.csv and (when there are metrics) the chart `stem`.png in `out`."""
        out.mkdir(parents=True, exist_ok=True)
        written = [out / f"{stem}.md", out / f"{stem}.csv"]
        written[0].write_text(f"# {title}\n\n" + self.markdown() + "\n")
        written[1].write_text(self.csv())
        if self.metrics:
            plot(self, out / f"{stem}.png", chart)
            written.append(out / f"{stem}.png")
        return written


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "\\'") + "'"


def select_runs(client: Any, experiment_ids: Sequence[str], runs: Sequence[str] = (),
                filter_string: str | None = None, tags: Sequence[str] = (),
                max_runs: int = 20, latest_per_name: bool = False) -> list[Any]:
    """Runs selected by every given selector: ids or names in `runs` (a name: the newest run of
    that name), `filter_string` and all `tags`; with no selector at all, the newest `eval` runs.
    `latest_per_name` then keeps the newest run of each run name.

    Oldest first; no duplicates. Raises CompareError naming what matched nothing.
    """
    order = ["attributes.start_time DESC"]
    named: dict[str, Any] = {}
    for ref in runs:
        hits = []
        if _RUN_ID.match(ref):
            try:
                hits = [client.get_run(ref)]
            except Exception:
                hits = []
        if not hits:
            hits = client.search_runs(experiment_ids, f"attributes.run_name = {_quote(ref)}",
                                      max_results=1, order_by=order)
        if not hits:
            raise CompareError(f"no run with id or name {ref!r} in experiment(s) "
                               f"{list(experiment_ids)}")
        named[hits[0].info.run_id] = hits[0]
    clauses = [f"tags.`{k}` = {_quote(v)}" for k, v in (t.split("=", 1) for t in tags)]
    if filter_string:
        clauses.append(filter_string)
    if not runs and not clauses:
        clauses = ["tags.`dutrain.stage` = 'eval'"]
    found = named
    if clauses:
        where = " and ".join(clauses)
        try:
            hits = client.search_runs(experiment_ids, where, order_by=order,
                                      max_results=1000 if runs else max_runs)
        except Exception as exc:
            raise CompareError(f"bad run selector {where!r}: {exc}") from None
        ids = {h.info.run_id for h in hits}
        found = ({i: r for i, r in named.items() if i in ids} if runs
                 else {h.info.run_id: h for h in hits})
        if not found:
            raise CompareError(f"no runs matched {where}"
                               + (f" among {list(runs)}" if runs else ""))
    chosen = sorted(found.values(), key=lambda r: (r.info.start_time or 0, r.info.run_id))
    if latest_per_name:
        chosen = list({r.info.run_name or r.info.run_id: r for r in chosen}.values())  # newer win
        chosen.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return chosen


def differing_params(runs: Sequence[Any], always: Sequence[str] = (),
                     ignore: Sequence[str] = ()) -> list[str]:
    """Param keys whose values are not the same in every run (plus `always`), `model` first."""
    keys = sorted({k for r in runs for k in r.data.params})
    diff = [k for k in keys if k not in ignore and len({r.data.params.get(k) for r in runs}) > 1]
    out = [k for k in always if k not in diff] + diff
    return sorted(out, key=lambda k: (k != "model", out.index(k)))


def choose_metrics(runs: Sequence[Any], wanted: Sequence[str] = (), limit: int = 12) -> list[str]:
    """`wanted` as given, else the headline metrics the runs share, else any shared metrics."""
    if wanted:
        return list(wanted)
    have = set.intersection(*[set(r.data.metrics) for r in runs]) if runs else set()
    if not have:
        have = {k for r in runs for k in r.data.metrics}

    def name(k: str) -> str:
        head, _, tail = k.partition("/")
        return tail if head in SPLITS and tail else k

    headline = sorted((k for k in have if name(k) in HEADLINE),
                      key=lambda k: (HEADLINE.index(name(k)), k))
    return (headline or sorted(have))[:limit]


def plot(comp: Comparison, path: Path, kind: str = "bar") -> None:
    """Small multiples, one panel per metric (metrics have different scales): bars per run, or
    a line across the runs in order."""
    # lazy: matplotlib is slow to import and only --plot needs it
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.info.run_name or r.info.run_id[:8] for r in comp.runs]
    n = len(comp.metrics)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.2 + 2.6 * rows), squeeze=False)
    x = np.arange(len(labels))
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for ax, m in zip(axes.flat, comp.metrics):
        v = np.array([r.data.metrics.get(m, np.nan) for r in comp.runs], dtype=float)
        if kind == "bar":
            ax.bar(x, v, color=colors)
        else:
            ax.plot(x, v, marker="o")
        ax.set_title(m, fontsize=9)
        ax.set_xticks(x, [str(i + 1) for i in x], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, [f"{i + 1}: {lab}" for i, lab in enumerate(labels)], loc="lower center",
               ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle("dutrain compare")
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(labels) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_against(comp: Comparison, metric: str, params: Sequence[str], path: Path,
                 log_x: Sequence[str] = (), title: str = "", reference: str | None = None) -> None:
    """One panel per param: `metric` of every run against that param's value (numbers on a
    numeric axis, log-scaled for the keys in `log_x` and for values a decade or more apart;
    other values as categories). Runs without the metric (failed) are left out. `reference`: a
    second metric of the same runs in the same panels (another marker), e.g. a bound."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(params))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, 3.8 * cols), 3.4 * rows),
                             squeeze=False)
    have = [r for r in comp.runs if r.data.metrics.get(metric) is not None]
    y = [float(r.data.metrics[metric]) for r in have]
    ref = [r.data.metrics.get(reference) for r in have] if reference else []
    for ax, p in zip(axes.flat, params):
        raw = [r.data.params.get(p, "–") for r in have]
        try:
            x: list[Any] = [float(v) for v in raw]
            if p in log_x or (x and min(x) > 0 and max(x) >= 10 * min(x)):  # decades apart
                ax.set_xscale("log")
        except ValueError:  # categories, in order of first appearance
            cats = list(dict.fromkeys(raw))
            x = [cats.index(v) for v in raw]
            ax.set_xticks(range(len(cats)), [c[:16] for c in cats], fontsize=8, rotation=20)
        ax.scatter(x, y, label=metric)
        if any(v is not None for v in ref):
            ax.scatter([a for a, v in zip(x, ref) if v is not None],
                       [float(v) for v in ref if v is not None], marker="_", s=200,
                       label=reference)
            ax.legend(fontsize=7)
        ax.set_xlabel(p, fontsize=9)
        ax.set_ylabel(metric if not ref else "value", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.suptitle(title or f"{metric} against each swept parameter", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(cfg: Any) -> tuple[Comparison, Path]:
    """Select, tabulate and write the comparison (no MLflow run of its own)."""
    # lazy: mlflow is slow to import and every runner imports dutrain.tracking for stage_run
    from mlflow import MlflowClient

    preflight.output_location("output", cfg.output)
    preflight.tracking(cfg.tracking, required=True)  # compare reads runs: tracking must be on
    client = MlflowClient(tracking_uri=tracking_uri(cfg.tracking.uri))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        raise CompareError(f"no MLflow experiment {cfg.tracking.experiment!r} at "
                           f"{tracking_uri(cfg.tracking.uri)}")
    runs = select_runs(client, [exp.experiment_id], cfg.runs, cfg.filter, cfg.tags, cfg.max_runs,
                       cfg.latest_per_name)
    comp = Comparison(runs, differing_params(runs, cfg.params, cfg.ignore_params),
                      choose_metrics(runs, cfg.metrics, cfg.max_metrics))
    out = Path(cfg.output)
    comp.write(out, "compare", cfg.chart)
    return comp, out


def run_compare(cfg: Any) -> int:
    """The `dutrain compare` runner: 0, or a UserError (exit 2) when the selection matches
    nothing usable or the tracking server cannot be reached."""
    comp, out = compare(cfg)
    ids = [r.info.run_id for r in comp.runs]
    with stage_run(cfg, "compare", tags={"dutrain.compared_runs": ",".join(ids)}) as run:
        for name in ("compare.md", "compare.csv", "compare.png"):
            run.log_artifact(out / name)
    print(comp.text())
    print(f"table: {out / 'compare.md'}  csv: {out / 'compare.csv'}  chart: {out / 'compare.png'}"
          + (f"  mlflow run: {run.run_id}" if run.active else ""))
    return 0
