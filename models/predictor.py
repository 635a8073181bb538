"""Answers to the two partner questions from one loaded artifact: similar apps, and expected performance.

Similarity is a FAISS search over the artifact's index (inner product of L2-normalised
embeddings = cosine). The query app is never its own neighbour.

Performance (CTR = clicks / impressions, CVR = conversions / clicks) is a Beta posterior:

- the prior mean is the neighbours' pooled rate, each neighbour weighted by its similarity
  (negative similarities count as 0): sum(w * clicks) / sum(w * impressions);
- the prior strength is the weighted neighbour evidence, capped at ``PRIOR_STRENGTH_CAP``
  pseudo-trials: neighbours describe apps *like* this one, not this app, so they never
  outweigh more than that much of its own data, and thin neighbour evidence stays a weak prior;
- when the neighbours have no trials at all, the artifact-wide rate is the prior mean with
  ``FALLBACK_PRIOR_STRENGTH`` pseudo-trials (an artifact without any statistics gives the
  uniform Beta(1, 1));
- the app's own clicks/impressions (conversions/clicks), when it has some, update the prior;
- the 95% interval is the posterior's 2.5% and 97.5% quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from models.artifact import ModelArtifact

if TYPE_CHECKING:
    from models.features import MetadataEncoder

MIN_K = 1
MAX_K = 100
PRIOR_STRENGTH_CAP = 100.0
FALLBACK_PRIOR_STRENGTH = 2.0
INTERVAL = 0.95
SEARCH_BATCH = 4096
# Keeps Beta parameters strictly positive when a pooled rate is exactly 0 or 1.
_RATE_EPSILON = 1e-6


class UnknownApp(KeyError):
    def __init__(self, app_id: str, n_apps: int):
        super().__init__(
            f"app '{app_id}' is not among this model's {n_apps} apps; valid ids are the catalog's app_id values "
            "(app_ids.json in the model artifact). For an app the model has never seen, send its metadata "
            "to POST /v1/similar instead"
        )
        self.app_id = app_id

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Neighbor:
    app_id: str
    score: float


@dataclass(frozen=True)
class PerformancePrediction:
    ctr: float
    ctr_low: float
    ctr_high: float
    cvr: float
    cvr_low: float
    cvr_high: float
    neighbors: list[Neighbor]
    support_impressions: int  # the app's own impressions plus its neighbours' (unweighted)


@dataclass(frozen=True)
class Rates:
    """``PerformancePrediction``'s numbers for many apps at once, one array entry per app."""

    ctr: np.ndarray
    ctr_low: np.ndarray
    ctr_high: np.ndarray
    cvr: np.ndarray
    cvr_low: np.ndarray
    cvr_high: np.ndarray
    support_impressions: np.ndarray


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not MIN_K <= k <= MAX_K:
        raise ValueError(f"k must be an integer from {MIN_K} to {MAX_K}, got {k!r}")
    return int(k)


def beta_posterior(successes: np.ndarray, trials: np.ndarray, prior_mean: np.ndarray,
                   prior_strength: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and central ``INTERVAL`` bounds of a Beta(mean * strength, (1 - mean) * strength) prior
    updated with ``successes`` out of ``trials``."""
    mean = np.clip(prior_mean, _RATE_EPSILON, 1 - _RATE_EPSILON)
    alpha = mean * prior_strength + successes
    beta = (1 - mean) * prior_strength + (trials - successes)
    tail = (1 - INTERVAL) / 2
    return alpha / (alpha + beta), stats.beta.ppf(tail, alpha, beta), stats.beta.ppf(1 - tail, alpha, beta)


def without_query(own: np.ndarray, found: np.ndarray, found_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of a top-(k + 1) search (ids ``found``, ``found_scores``) for query rows ``own``, the
    query itself dropped: (ids, scores), padded with -1 / -inf."""
    # Stable sort moves the query's own entry (and FAISS's -1 padding) to the end of its row.
    dropped = (found == own[:, None]) | (found < 0)
    order = np.argsort(dropped, axis=1, kind="stable")[:, :k]
    kept = ~np.take_along_axis(dropped, order, axis=1)
    return (np.where(kept, np.take_along_axis(found, order, axis=1), -1),
            np.where(kept, np.take_along_axis(found_scores, order, axis=1), -np.inf))


class Predictor:
    def __init__(self, artifact: ModelArtifact):
        self.artifact = artifact
        table = artifact.app_stats.set_index("app_id").reindex(artifact.app_ids)
        # Per artifact row: own impressions, clicks, conversions (0 where the app has no statistics).
        self._impressions = table["impressions"].fillna(0).to_numpy(np.float64)
        self._clicks = np.minimum(table["clicks"].fillna(0).to_numpy(np.float64), self._impressions)
        # CVR counts conversions per click; post-view conversions beyond the clicks are not CVR trials.
        self._conversions = np.minimum(table["conversions"].fillna(0).to_numpy(np.float64), self._clicks)
        stats_all = artifact.app_stats
        impressions, clicks = float(stats_all["impressions"].sum()), float(stats_all["clicks"].sum())
        self.global_ctr = clicks / impressions if impressions > 0 else 0.5
        self.global_cvr = float(stats_all["conversions"].clip(upper=stats_all["clicks"]).sum()) / clicks if clicks > 0 else 0.5

    # -- similarity --------------------------------------------------------------------
    def position(self, app_id: str) -> int:
        try:
            return self.artifact.positions[app_id]
        except KeyError:
            raise UnknownApp(app_id, len(self.artifact.app_ids)) from None

    def similar_many(self, app_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k neighbours of many apps at once: (positions into ``artifact.app_ids``, scores), each (n, k).

        The query app is excluded. Rows are padded with -1 / -inf where the index holds fewer
        apps, and an app this model does not know gets an all-padding row (batch evaluation scores
        it as having no neighbours; ``similar`` raises ``UnknownApp`` instead).
        """
        positions = np.array([self.artifact.positions.get(a, -1) for a in app_ids], dtype=np.int64)
        return self.similar_rows(positions, k)

    def similar_rows(self, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``similar_many`` for artifact rows (-1: an unknown app), as bulk export walks them."""
        k = check_k(k)
        neighbours = np.full((len(positions), k), -1, dtype=np.int64)
        scores = np.full((len(positions), k), -np.inf, dtype=np.float32)
        known = np.flatnonzero(positions >= 0)
        for start in range(0, known.size, SEARCH_BATCH):
            rows = known[start : start + SEARCH_BATCH]
            own = positions[rows]
            found_scores, found = self.artifact.index.search(self.artifact.embeddings[own], k + 1)
            neighbours[rows], scores[rows] = without_query(own, found, found_scores, k)
        return neighbours, scores

    def similar(self, app_id: str, k: int = 10) -> list[Neighbor]:
        self.position(app_id)
        neighbours, scores = self.similar_many([app_id], k)
        return self._neighbors(neighbours[0], scores[0])

    @cached_property
    def metadata_encoder(self) -> "MetadataEncoder":
        from models.features import MetadataEncoder  # the trainer's module; loaded only for cold start

        return MetadataEncoder.from_artifact(self.artifact)

    def similar_to_metadata(self, metadata: dict[str, Any], k: int = 10) -> list[Neighbor]:
        """Cold start: neighbours of an app known only by its metadata (category, features, description...)."""
        found, scores = self._search_metadata(metadata, k)
        return self._neighbors(found[0], scores[0])

    def _search_metadata(self, metadata: dict[str, Any], k: int) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        vector = np.ascontiguousarray(self.metadata_encoder.embed([metadata]), dtype=np.float32)
        scores, found = self.artifact.index.search(vector, k)
        return found, scores

    def _neighbors(self, positions: np.ndarray, scores: np.ndarray) -> list[Neighbor]:
        return [Neighbor(self.artifact.app_ids[p], float(s)) for p, s in zip(positions, scores) if p >= 0]

    # -- performance -------------------------------------------------------------------
    def predict(self, app_id: str | None = None, metadata: dict[str, Any] | None = None, k: int = 10) -> PerformancePrediction:
        """Expected CTR/CVR with 95% intervals, for a known app (by id) or a new one (by metadata)."""
        if (app_id is None) == (metadata is None):
            raise ValueError("give exactly one of app_id (a known app) or metadata (a new app)")
        if app_id is not None:
            return self.predict_many([app_id], k)[0]
        positions, scores = self._search_metadata(metadata, k)  # type: ignore[arg-type]
        return self._predictions(positions, scores, own=np.array([-1]))[0]

    def predict_many(self, app_ids: Sequence[str], k: int = 10) -> list[PerformancePrediction]:
        """``predict`` for many known apps with one batched search; ``UnknownApp`` names the first unknown id."""
        own = np.array([self.position(a) for a in app_ids], dtype=np.int64)
        positions, scores = self.similar_many(app_ids, k)
        return self._predictions(positions, scores, own)

    def _predictions(self, positions: np.ndarray, scores: np.ndarray, own: np.ndarray) -> list[PerformancePrediction]:
        r = self.rates(positions, scores, own)
        return [
            PerformancePrediction(
                ctr=float(r.ctr[i]), ctr_low=float(r.ctr_low[i]), ctr_high=float(r.ctr_high[i]),
                cvr=float(r.cvr[i]), cvr_low=float(r.cvr_low[i]), cvr_high=float(r.cvr_high[i]),
                neighbors=self._neighbors(positions[i], scores[i]),
                support_impressions=int(r.support_impressions[i]),
            )
            for i in range(len(own))
        ]

    def rates(self, positions: np.ndarray, scores: np.ndarray, own: np.ndarray) -> Rates:
        """CTR/CVR with intervals for apps whose neighbours are ``positions``/``scores`` (as ``similar_many``
        gives them) and whose own rows are ``own`` (-1 for a new app); vectorised, for bulk export."""
        valid = positions >= 0
        safe = np.where(valid, positions, 0)
        weights = np.where(valid, np.clip(scores, 0.0, None), 0.0)
        has_own = own >= 0
        own_safe = np.where(has_own, own, 0)
        own_impressions = np.where(has_own, self._impressions[own_safe], 0.0)
        own_clicks = np.where(has_own, self._clicks[own_safe], 0.0)
        own_conversions = np.where(has_own, self._conversions[own_safe], 0.0)

        def rate(successes: np.ndarray, trials: np.ndarray, fallback: float, own_successes: np.ndarray,
                 own_trials: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            pooled_trials = (weights * trials[safe]).sum(axis=1)
            pooled_successes = (weights * successes[safe]).sum(axis=1)
            has_prior = pooled_trials > 0
            prior_mean = np.where(has_prior, pooled_successes / np.where(has_prior, pooled_trials, 1.0), fallback)
            prior_strength = np.where(has_prior, np.minimum(pooled_trials, PRIOR_STRENGTH_CAP), FALLBACK_PRIOR_STRENGTH)
            return beta_posterior(own_successes, own_trials, prior_mean, prior_strength)

        ctr, ctr_low, ctr_high = rate(self._clicks, self._impressions, self.global_ctr, own_clicks, own_impressions)
        cvr, cvr_low, cvr_high = rate(self._conversions, self._clicks, self.global_cvr, own_conversions, own_clicks)
        support = own_impressions + np.where(valid, self._impressions[safe], 0.0).sum(axis=1)
        return Rates(ctr, ctr_low, ctr_high, cvr, cvr_low, cvr_high, support.astype(np.int64))
