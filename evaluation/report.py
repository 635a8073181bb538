"""The HTML reports a person reads: the evaluation's ``report.html`` (beside the ``evaluation.json``
the pipeline reads) and an A/B experiment's (``render_ab``, for pipelines/ab_analysis.py).

One self-contained file (inline CSS, plots as base64 PNG, no script, no external link), built from
rankings that were scored by the same code as the gate (``evaluation/metrics.py``):

- the gate decision and its numbers (relative improvement, bootstrap interval, threshold);
- recall@k for k = 1..50 of the candidate, the champion and the baselines, one curve each;
- recall@10 by segment of the query app: category, region, and cold start (no train positive)
  vs warm.

A segment's recall is computed like the headline: per user, the mean over that user's queries
in the segment, then the mean over users who have one.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no global backend or figure state
from scipy import stats

from evaluation.ab import LiftComparison, posterior_draws
from evaluation.baselines import Ranking
from evaluation.holdout import HoldoutQueries
from evaluation.metrics import distinct_integers, group_mean, hit_matrix

CURVE_K = 50
SEGMENT_K = 10
MAX_SEGMENT_VALUES = 12  # a bar chart of more categories is unreadable: the most queried ones are shown


@dataclass(frozen=True)
class SegmentRecall:
    value: str
    recall: dict[str, float]  # ranker name -> recall@10
    users: int


def per_query_hits(queries: HoldoutQueries, ranking: Ranking) -> np.ndarray:
    """(n_queries, k) bool: is the ranking's item at each position one of the query's relevant apps."""
    if ranking.rankings.shape[0] != queries.n_queries:
        raise ValueError(f"ranking '{ranking.name}' has {ranking.rankings.shape[0]} rows for {queries.n_queries} queries")
    return hit_matrix(queries.to_holdout_items(ranking.rankings, ranking.app_ids), queries.relevant)


def recall_curve(queries: HoldoutQueries, ranking: Ranking, max_k: int = CURVE_K) -> np.ndarray:
    """Mean-over-users recall@k for k = 1..max_k (a ranking narrower than k simply has no more hits)."""
    return _recall_curve(queries, per_query_hits(queries, ranking), max_k)


def _recall_curve(queries: HoldoutQueries, hits: np.ndarray, max_k: int) -> np.ndarray:
    cumulative = np.zeros((hits.shape[0], max_k))
    width = min(hits.shape[1], max_k)
    cumulative[:, :width] = np.cumsum(hits[:, :width], axis=1)
    cumulative[:, width:] = cumulative[:, width - 1 : width] if width else 0.0
    sizes = queries.relevant.sizes.astype(np.float64)
    curve = np.empty(max_k)
    for k in range(1, max_k + 1):
        denominator = np.minimum(sizes, k)
        per_query = np.where(denominator > 0, cumulative[:, k - 1] / np.where(denominator > 0, denominator, 1.0), np.nan)
        curve[k - 1] = np.nanmean(group_mean(per_query, queries.query_users, queries.n_users))
    return curve


def segment_recall(queries: HoldoutQueries, rankings: Sequence[Ranking], labels: np.ndarray,
                   k: int = SEGMENT_K) -> list[SegmentRecall]:
    """recall@k per value of ``labels`` (one label per query), most queried values first."""
    return _segment_recall(queries, {ranking.name: per_query_hits(queries, ranking) for ranking in rankings}, labels, k)


def _segment_recall(queries: HoldoutQueries, hits_by_ranker: Mapping[str, np.ndarray], labels: np.ndarray,
                    k: int) -> list[SegmentRecall]:
    per_ranker = {}
    denominator = np.minimum(queries.relevant.sizes, k).astype(np.float64)
    for name, hits in hits_by_ranker.items():
        per_ranker[name] = np.where(denominator > 0, hits[:, :k].sum(axis=1) / np.maximum(denominator, 1.0), np.nan)
    labels = np.asarray(labels, dtype=object).astype(str)
    values, counts = np.unique(labels, return_counts=True)
    out = []
    for value in values[np.argsort(-counts, kind="stable")][:MAX_SEGMENT_VALUES]:
        mask = labels == value
        users = int(distinct_integers(queries.query_users[mask]).size)
        recall = {}
        for name, per_query in per_ranker.items():
            by_user = group_mean(np.where(mask, per_query, np.nan), queries.query_users, queries.n_users)
            recall[name] = float(np.nanmean(by_user)) if np.isfinite(by_user).any() else float("nan")
        out.append(SegmentRecall(value, recall, users))
    return out


# -- rendering ---------------------------------------------------------------------------
def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _png(figure: Figure) -> str:
    return base64.b64encode(png_bytes(figure)).decode("ascii")


def _curve_plot(curves: Mapping[str, np.ndarray]) -> str:
    figure = Figure(figsize=(7.5, 4.2))
    axis = figure.subplots()
    for name, curve in curves.items():
        axis.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=2.2 if name == "candidate" else 1.4)
    axis.axvline(SEGMENT_K, color="#999", linestyle=":", linewidth=1)
    axis.set_xlabel("k")
    axis.set_ylabel("recall@k (mean over users)")
    axis.set_xlim(1, max(len(c) for c in curves.values()))
    axis.set_ylim(0, None)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    return _png(figure)


def _segment_plot(title: str, segments: Sequence[SegmentRecall]) -> str:
    names = list(segments[0].recall) if segments else []
    figure = Figure(figsize=(7.5, 0.5 + 0.42 * max(len(segments), 1) * max(len(names), 1) ** 0.5))
    axis = figure.subplots()
    height = 0.8 / max(len(names), 1)
    positions = np.arange(len(segments))
    for j, name in enumerate(names):
        axis.barh(positions + j * height, [s.recall[name] for s in segments], height=height, label=name)
    axis.set_yticks(positions + height * (len(names) - 1) / 2)
    axis.set_yticklabels([f"{s.value} ({s.users:,} users)" for s in segments], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(f"recall@{SEGMENT_K}")
    axis.set_title(title, fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    return _png(figure)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not np.isfinite(value) else f"{value:.4f}"
    return html.escape(str(value))


def _metrics_table(evaluation: Mapping) -> str:
    columns = [("candidate", evaluation.get("candidate")), ("champion", evaluation.get("champion")),
               ("popularity baseline", evaluation.get("baseline"))]
    columns = [(name, values) for name, values in columns if values]
    names = [n for n in (columns[0][1] if columns else {}) if n != "name"]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    rows = "".join(
        f"<tr><td>{html.escape(metric)}</td>" + "".join(f"<td>{_fmt(values.get(metric))}</td>" for _, values in columns) + "</tr>"
        for metric in names
    )
    return f"<table><tr><th>metric</th>{head}</tr>{rows}</table>"


def _segment_table(segments: Sequence[SegmentRecall]) -> str:
    if not segments:
        return "<p>no queries</p>"
    names = list(segments[0].recall)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><td>{html.escape(s.value)}</td><td>{s.users:,}</td>" + "".join(f"<td>{_fmt(s.recall[n])}</td>" for n in names) + "</tr>"
        for s in segments
    )
    return f"<table><tr><th>segment</th><th>users</th>{head}</tr>{rows}</table>"


STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left} .decision{padding:.8em 1em;border-radius:6px;font-size:1.05em}
.approved{background:#e3f6e5;border:1px solid #7bc47f} .pending{background:#fff6dd;border:1px solid #e0c050}
.rejected{background:#fbe4e4;border:1px solid #d98080} img{max-width:100%} .note{color:#666;font-size:.85em}
"""


def render(evaluation: Mapping, curves: Mapping[str, np.ndarray], segments: Mapping[str, Sequence[SegmentRecall]],
           notes: Sequence[str] = ()) -> str:
    """The report page for an ``evaluation.json`` dict, recall curves per ranker and segment tables."""
    decision = str(evaluation.get("decision", "unknown"))
    comparison = evaluation.get("comparison") or {}
    threshold = (evaluation.get("threshold") or {}).get("min_relative_improvement")
    holdout = evaluation.get("holdout") or {}

    def pct(value: object) -> str:
        return "-" if value is None else f"{float(value):+.2%}"

    gate = (
        f"<div class='decision {html.escape(decision)}'><b>{html.escape(decision.upper())}</b>: "
        f"{html.escape(str(evaluation.get('decision_reason', '')))}</div>"
        "<table>"
        f"<tr><td>compared against</td><td>{html.escape(str(comparison.get('against', '-')))}"
        f"{' v' + str(evaluation['champion_version']) if evaluation.get('champion_version') else ''}</td></tr>"
        f"<tr><td>relative improvement of {html.escape(str(comparison.get('metric', 'recall_at_10')))}</td>"
        f"<td>{pct(comparison.get('relative_improvement'))}</td></tr>"
        f"<tr><td>{float(comparison.get('confidence', 0.95)):.0%} interval (bootstrap over "
        f"{html.escape(str(comparison.get('resampled', 'users')))}, {comparison.get('bootstrap_samples', '-')} samples)</td>"
        f"<td>{pct(comparison.get('ci_low'))} .. {pct(comparison.get('ci_high'))}</td></tr>"
        f"<tr><td>rule</td><td>improvement &ge; {pct(threshold)} and interval low end &gt; 0</td></tr>"
        f"<tr><td>holdout</td><td>{holdout.get('users', '-'):,} users, {holdout.get('queries', '-'):,} queries, "
        f"{holdout.get('apps', '-'):,} apps</td></tr>"
        "</table>"
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>appsim evaluation</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>appsim evaluation: candidate vs champion</h1>",
        "<h2>Gate</h2>", gate,
        "<h2>Metrics at k = 10</h2>", _metrics_table(evaluation),
        f"<h2>recall@k, k = 1..{CURVE_K}</h2>",
        f"<img alt='recall at k curves' src='data:image/png;base64,{_curve_plot(curves)}'>" if curves else "<p>no curves</p>",
    ]
    for title, rows in segments.items():
        parts.append(f"<h2>recall@{SEGMENT_K} by {html.escape(title)}</h2>")
        if rows:
            parts.append(f"<img alt='recall by {html.escape(title)}' src='data:image/png;base64,{_segment_plot(title, rows)}'>")
        parts.append(_segment_table(rows))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def query_segments(queries: HoldoutQueries, train_interactions: pd.DataFrame,
                   catalog: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Per-query labels: ``start`` (cold: the query app has no train positive, else warm) and, with a
    catalog, the query app's ``category`` and ``region`` ('unknown' where the catalog has none)."""
    positive = (train_interactions["clicks"] > 0) | (train_interactions["conversions"] > 0)
    warm = pd.Index(train_interactions.loc[positive, "app_id"].astype(str).unique())
    query_apps = queries.query_app_ids
    segments = {"cold start vs warm": np.where(pd.Index(query_apps).isin(warm), "warm", "cold").astype(object)}
    if catalog is not None:
        table = catalog.assign(app_id=catalog["app_id"].astype(str)).drop_duplicates("app_id").set_index("app_id")
        for column in ("category", "region"):
            if column in table.columns:
                values = table[column].reindex(query_apps)
                segments[column] = values.where(values.notna(), "unknown").astype(str).to_numpy(dtype=object)
    return segments


def build(evaluation: Mapping, queries: HoldoutQueries, rankings: Sequence[Ranking],
          segments: Mapping[str, np.ndarray], notes: Sequence[str] = ()) -> str:
    """The page: curves of every ranking (k up to its width) and recall@10 per segment; each ranking's note is
    listed with ``notes``."""
    hits = {r.name: per_query_hits(queries, r) for r in rankings}  # once per ranking: curves and segments read them
    curves = {name: _recall_curve(queries, h, min(CURVE_K, h.shape[1])) for name, h in hits.items()}
    tables = {title: _segment_recall(queries, hits, labels, SEGMENT_K) for title, labels in segments.items()}
    return render(evaluation, curves, tables, [*notes, *(r.note for r in rankings if r.note)])


# -- A/B experiment report -----------------------------------------------------------------
def ab_posterior_png(comparisons: Mapping[str, LiftComparison]) -> bytes:
    """Per rate: both arms' Beta posteriors, and the lift's distribution against the win line (PNG)."""
    figure = Figure(figsize=(11, 3.5 * len(comparisons)))
    axes = figure.subplots(len(comparisons), 2, squeeze=False)
    for row, (name, comparison) in enumerate(comparisons.items()):
        density = axes[row][0]
        for label, posterior in (("champion", comparison.champion), ("challenger", comparison.challenger)):
            low, high = stats.beta.ppf([0.0005, 0.9995], posterior.alpha, posterior.beta)
            x = np.linspace(low, high, 400)
            density.plot(x, stats.beta.pdf(x, posterior.alpha, posterior.beta), label=f"{label} (mean {posterior.mean:.3%})")
        density.set_title(f"{name.upper()} posterior (Beta)")
        density.legend(fontsize=8)
        rng = np.random.default_rng(comparison.seed)
        a = posterior_draws(comparison.champion, comparison.draws, rng)
        b = posterior_draws(comparison.challenger, comparison.draws, rng)
        lift = axes[row][1]
        counts, edges = np.histogram(b / a - 1, bins=120, density=True)
        lift.stairs(counts, edges, fill=True, color="tab:green", alpha=0.7)
        for edge in comparison.lift_interval:
            lift.axvline(edge, color="k", linestyle="--", linewidth=1)
        lift.axvline(comparison.min_lift, color="tab:red", linewidth=1, label=f"+{comparison.min_lift:.0%} (win line)")
        lift.axvline(0, color="gray", linewidth=1)
        lift.set_title(f"{name.upper()} relative lift: P(better) {comparison.prob_challenger_better:.1%}, "
                       f"P(>{comparison.min_lift:.0%}) {comparison.prob_lift_above_min:.1%}", fontsize=9)
        lift.legend(fontsize=8)
    return png_bytes(figure)


def render_ab(title: str, summary: str, png: bytes | None, figures: Mapping) -> str:
    """An A/B report page: the summary text, the posterior plots (or why there are none) and the figures as JSON."""
    plots = (f"<img alt='posteriors' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>" if png
             else "<p class='note'>no plots yet: not enough data (see the summary)</p>")
    return "\n".join([
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<pre>{html.escape(summary)}</pre>",
        "<h2>Posteriors</h2>", plots,
        f"<h2>Figures (JSON)</h2><pre>{html.escape(json.dumps(figures, indent=2, default=str))}</pre>",
        "</body></html>",
    ])
