"""Candidate vs reference on the same holdout queries: per-user scores, a bootstrap over users, the gate.

A ranker (a model, or the popularity baseline) is scored by ``score_rankings`` into per-user
metric means (``evaluation/holdout.py`` describes the protocol). ``compare`` resamples USERS
with replacement and computes, in every sample, the relative improvement of mean recall@10
(candidate / reference - 1); the interval is the sample's 2.5% and 97.5% percentiles. The
gate: improved = relative improvement >= threshold AND the interval's low end > 0.

Every bootstrap here draws its resamples from the same seed, so the candidate's standard
deviations and the comparison's interval come from the same user resamples, and a rerun
gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from evaluation.holdout import HoldoutQueries
from evaluation.metrics import PADDING, catalog_coverage, group_mean, mean_absolute_error, ranking_metrics

K = 10
HEADLINE = f"recall_at_{K}"
METRIC_KEYS = (f"recall_at_{K}", f"precision_at_{K}", f"ndcg_at_{K}", f"map_at_{K}", "coverage", "ctr_mae")
CONFIDENCE = 0.95
# A reference that scores 0 would make the relative improvement infinite; this floor keeps it finite.
_REFERENCE_FLOOR = 1e-9
_RESAMPLE_CHUNK = 64
# Coverage is recounted over every recommended (user, app) pair per resample, the slow one at
# scale; 200 resamples pin a standard deviation down to about 5%.
COVERAGE_RESAMPLES = 200


class IncomparableScores(ValueError):
    """Candidate and reference were not scored on the same users."""


@dataclass(frozen=True)
class RankerScores:
    per_user: dict[str, np.ndarray]   # ranking metric -> (n_users,) mean over the user's queries
    recommended: sparse.csr_matrix    # (n_users, ranker apps) bool: apps in any of the user's top-k lists
    catalog_size: int
    ctr_predicted: np.ndarray         # per holdout app with enough impressions (evaluation/holdout.py)
    ctr_observed: np.ndarray

    @property
    def n_users(self) -> int:
        return self.recommended.shape[0]

    @property
    def ctr_errors(self) -> np.ndarray:
        return np.abs(self.ctr_predicted - self.ctr_observed)

    def metrics(self) -> dict[str, float]:
        values = {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for name, v in self.per_user.items()}
        values["coverage"] = catalog_coverage(self.recommended.indices, self.catalog_size)
        values["ctr_mae"] = mean_absolute_error(self.ctr_predicted, self.ctr_observed)
        return values


def score_rankings(
    queries: HoldoutQueries,
    rankings: np.ndarray,
    ranker_app_ids: Sequence[str],
    *,
    catalog_size: int,
    ctr_predicted: np.ndarray,
    ctr_observed: np.ndarray,
) -> RankerScores:
    """Score a ranker's top-k lists, one row per query, as positions into ``ranker_app_ids`` (-1 = padding).

    Apps the holdout does not know can never be hits; apps the ranker does not know were never ranked.
    """
    if rankings.shape[0] != queries.n_queries:
        raise ValueError(f"{rankings.shape[0]} rankings for {queries.n_queries} queries")
    if catalog_size <= 0:
        raise ValueError(f"catalog_size must be positive, got {catalog_size}")
    per_query = ranking_metrics(queries.to_holdout_items(rankings, ranker_app_ids), queries.relevant)
    per_user = {name: group_mean(values, queries.query_users, queries.n_users) for name, values in per_query.items()}
    ranked = rankings >= 0
    users = np.broadcast_to(queries.query_users[:, None], rankings.shape)[ranked]
    recommended = sparse.csr_matrix(
        (np.ones(users.size, dtype=bool), (users, rankings[ranked])),
        shape=(queries.n_users, max(len(ranker_app_ids), 1)),
    )
    recommended.sum_duplicates()
    return RankerScores(per_user=per_user, recommended=recommended, catalog_size=catalog_size,
                        ctr_predicted=np.asarray(ctr_predicted, dtype=np.float64),
                        ctr_observed=np.asarray(ctr_observed, dtype=np.float64))


def popularity_rankings(train_interactions: pd.DataFrame, query_app_ids: Sequence[str], k: int = K) -> tuple[np.ndarray, list[str]]:
    """The baseline: every query gets the apps with the most positively engaged train users, itself excluded.

    Ties in popularity are broken by app id, so the baseline is deterministic. Returns the
    rankings (positions into the returned app list) and that app list.
    """
    positive = train_interactions[(train_interactions["clicks"] > 0) | (train_interactions["conversions"] > 0)]
    counts = positive.groupby("app_id")["user_id"].nunique().reset_index(name="users")
    counts = counts.sort_values(["users", "app_id"], ascending=[False, True], kind="stable")
    app_ids = counts["app_id"].tolist()
    top = np.arange(min(k + 1, len(app_ids)), dtype=np.int64)
    position = {app_id: i for i, app_id in enumerate(app_ids)}
    own = np.array([position.get(a, PADDING) for a in query_app_ids], dtype=np.int64)
    candidates = np.broadcast_to(top, (len(own), top.size))
    dropped = candidates == own[:, None]
    order = np.argsort(dropped, axis=1, kind="stable")[:, :k]
    chosen = np.where(np.take_along_axis(dropped, order, axis=1), PADDING, np.take_along_axis(candidates, order, axis=1))
    rankings = np.full((len(own), k), PADDING, dtype=np.int64)
    rankings[:, : chosen.shape[1]] = chosen
    return rankings, app_ids


# -- bootstrap ---------------------------------------------------------------------------
def resample_counts(n: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` units as count matrices ``(chunk, n)``: how often each unit was drawn.

    Chunked so that memory stays small with 20K users x 1,000 samples.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, samples, _RESAMPLE_CHUNK):
        chunk = min(_RESAMPLE_CHUNK, samples - start)
        draws = rng.integers(0, n, size=(chunk, n))
        flat = (np.arange(chunk)[:, None] * n + draws).ravel()
        yield np.bincount(flat, minlength=chunk * n).reshape(chunk, n)


def _weighted_means(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample: mean of ``values`` drawn ``counts`` times, NaN values skipped."""
    scored = ~np.isnan(values)
    weights = counts[:, scored].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return weights @ values[scored] / weights.sum(axis=1)


def summarize(scores: RankerScores, *, samples: int, seed: int) -> dict[str, dict[str, float]]:
    """Every metric as ``{"value", "standard_deviation"}``; standard deviations over user resamples
    (coverage over the first ``COVERAGE_RESAMPLES`` of them), CTR MAE over app resamples."""
    draws: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_KEYS}
    recommended = scores.recommended
    user_of_entry = np.repeat(np.arange(scores.n_users), np.diff(recommended.indptr))
    for counts in resample_counts(scores.n_users, samples, seed):
        for name, values in scores.per_user.items():
            draws[name].append(_weighted_means(counts, values))
        coverage_budget = COVERAGE_RESAMPLES - sum(len(d) for d in draws["coverage"])
        draws["coverage"].append(np.array([
            np.count_nonzero(np.bincount(recommended.indices[drawn[user_of_entry]], minlength=recommended.shape[1]))
            for drawn in (counts > 0)[: max(coverage_budget, 0)]
        ]) / scores.catalog_size)
    errors = scores.ctr_errors
    if errors.size:
        for counts in resample_counts(errors.size, samples, seed):
            draws["ctr_mae"].append(_weighted_means(counts, errors))
    values = scores.metrics()
    return {
        name: {
            "value": values[name],
            "standard_deviation": float(np.nanstd(np.concatenate(draws[name]))) if draws[name] else float("nan"),
        }
        for name in METRIC_KEYS
    }


@dataclass(frozen=True)
class Comparison:
    metric: str
    candidate: float
    reference: float
    relative_improvement: float
    ci_low: float
    ci_high: float
    confidence: float
    bootstrap_samples: int


def relative_improvement(candidate: np.ndarray | float, reference: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(candidate) - reference) / np.maximum(reference, _REFERENCE_FLOOR)


def compare(candidate: RankerScores, reference: RankerScores, *, samples: int, seed: int,
            metric: str = HEADLINE, confidence: float = CONFIDENCE) -> Comparison:
    """Relative improvement of the mean-over-users ``metric`` with a bootstrap interval (users resampled)."""
    if candidate.n_users != reference.n_users:
        raise IncomparableScores(
            f"candidate has {candidate.n_users} users and reference {reference.n_users}: score both on the same HoldoutQueries"
        )
    if samples < 1:
        raise ValueError(f"bootstrap samples must be at least 1, got {samples}")
    cand_values, ref_values = candidate.per_user[metric], reference.per_user[metric]
    both = ~(np.isnan(cand_values) | np.isnan(ref_values))
    cand_values, ref_values = cand_values[both], ref_values[both]
    improvements = []
    for counts in resample_counts(cand_values.size, samples, seed):
        weights = counts.astype(np.float64)
        improvements.append(relative_improvement(weights @ cand_values, weights @ ref_values))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(np.concatenate(improvements), [tail, 100 - tail])
    cand_mean, ref_mean = float(cand_values.mean()), float(ref_values.mean())
    return Comparison(
        metric=metric,
        candidate=cand_mean,
        reference=ref_mean,
        relative_improvement=float(relative_improvement(cand_mean, ref_mean)),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        bootstrap_samples=samples,
    )


# -- the gate ----------------------------------------------------------------------------
def is_improved(comparison: Comparison, min_relative_improvement: float) -> bool:
    return comparison.relative_improvement >= min_relative_improvement and comparison.ci_low > 0


def decide(improved: bool, approval_status: str) -> str:
    """rejected unless improved; then approved, or pending when a human must sign off."""
    if not improved:
        return "rejected"
    return "approved" if approval_status == "Approved" else "pending"


def decision_reason(comparison: Comparison, against: str, min_relative_improvement: float) -> str:
    """One sentence with the numbers, e.g. 'recall@10 0.412 vs champion v3 0.395: +4.3% (95% CI +1.2% .. +7.5%)
    >= 3.0% threshold and CI above 0'."""
    name = comparison.metric.replace("_at_", "@")
    head = (
        f"{name} {comparison.candidate:.3f} vs {against} {comparison.reference:.3f}: "
        f"{comparison.relative_improvement:+.1%} ({comparison.confidence:.0%} CI "
        f"{comparison.ci_low:+.1%} .. {comparison.ci_high:+.1%})"
    )
    meets = comparison.relative_improvement >= min_relative_improvement
    above = comparison.ci_low > 0
    threshold = f"{'>=' if meets else '<'} {min_relative_improvement:.1%} threshold"
    interval = "CI above 0" if above else "CI not above 0"
    return f"{head} {threshold} {'and' if meets == above else 'but'} {interval}"
