import math

import numpy as np
import pytest
from scipy import sparse

from evaluation import compare as cmp
from evaluation.holdout import build_queries
from tests.evaluation.test_holdout import table


def scores_from(recall: np.ndarray) -> cmp.RankerScores:
    """Scores with the given per-user recall@10 (the other ranking metrics follow it)."""
    per_user = {name: np.asarray(recall, dtype=float) for name in cmp.METRIC_KEYS[:4]}
    return cmp.RankerScores(per_user=per_user, recommended=sparse.csr_matrix((len(recall), 1), dtype=bool),
                            catalog_size=1, ctr_predicted=np.zeros(0), ctr_observed=np.zeros(0))


USERS = np.random.default_rng(0).uniform(0.2, 0.6, size=300)


def test_a_candidate_identical_to_the_reference_is_not_improved():
    comparison = cmp.compare(scores_from(USERS), scores_from(USERS), samples=200, seed=1)
    assert comparison.relative_improvement == 0.0
    assert comparison.ci_low == 0.0 and comparison.ci_high == 0.0
    assert not cmp.is_improved(comparison, 0.03)
    assert not cmp.is_improved(comparison, 0.0)  # the interval must be above 0, not touch it


def test_a_clearly_better_candidate_is_improved_and_the_interval_holds_the_estimate():
    rng = np.random.default_rng(2)
    better = np.clip(USERS * 1.2 + rng.normal(0, 0.02, size=USERS.size), 0, 1)
    comparison = cmp.compare(scores_from(better), scores_from(USERS), samples=500, seed=1)
    assert comparison.relative_improvement == pytest.approx(better.mean() / USERS.mean() - 1)
    assert 0 < comparison.ci_low <= comparison.relative_improvement <= comparison.ci_high
    assert cmp.is_improved(comparison, 0.03)
    assert comparison.bootstrap_samples == 500 and comparison.confidence == 0.95


def test_a_noisy_small_gain_fails_the_gate():
    rng = np.random.default_rng(3)
    noisy = np.clip(USERS + rng.normal(0.005, 0.2, size=USERS.size), 0, 1)
    comparison = cmp.compare(scores_from(noisy), scores_from(USERS), samples=300, seed=1)
    assert comparison.ci_low < comparison.relative_improvement < comparison.ci_high
    assert comparison.ci_low < 0
    assert not cmp.is_improved(comparison, 0.03)


def test_the_bootstrap_is_seeded():
    better = USERS * 1.1
    first = cmp.compare(scores_from(better), scores_from(USERS), samples=100, seed=5)
    again = cmp.compare(scores_from(better), scores_from(USERS), samples=100, seed=5)
    other = cmp.compare(scores_from(better), scores_from(USERS), samples=100, seed=6)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_a_zero_reference_gives_a_finite_improvement():
    comparison = cmp.compare(scores_from(USERS), scores_from(np.zeros_like(USERS)), samples=50, seed=0)
    assert math.isfinite(comparison.relative_improvement) and comparison.relative_improvement > 1
    assert cmp.is_improved(comparison, 0.03)


def test_scores_on_different_users_are_refused():
    with pytest.raises(cmp.IncomparableScores, match="same HoldoutQueries"):
        cmp.compare(scores_from(USERS), scores_from(USERS[:10]), samples=10, seed=0)


def test_resample_counts_draw_n_units_per_sample():
    chunks = list(cmp.resample_counts(7, 100, seed=0))
    counts = np.concatenate(chunks)
    assert counts.shape == (100, 7)
    assert (counts.sum(axis=1) == 7).all()
    assert np.array_equal(counts, np.concatenate(list(cmp.resample_counts(7, 100, seed=0))))


def test_decide():
    assert cmp.decide(False, "Approved") == "rejected"
    assert cmp.decide(True, "Approved") == "approved"
    assert cmp.decide(True, "PendingManualApproval") == "pending"


def comparison(rel: float, low: float, high: float) -> cmp.Comparison:
    return cmp.Comparison("recall_at_10", 0.412, 0.395, rel, low, high, 0.95, 1000)


def test_decision_reason_states_the_numbers():
    assert cmp.decision_reason(comparison(0.043, 0.012, 0.075), "champion v3", 0.03) == (
        "recall@10 0.412 vs champion v3 0.395: +4.3% (95% CI +1.2% .. +7.5%) >= 3.0% threshold and CI above 0"
    )
    assert cmp.decision_reason(comparison(0.043, -0.01, 0.09), "champion v3", 0.03).endswith(
        ">= 3.0% threshold but CI not above 0"
    )
    assert cmp.decision_reason(comparison(0.01, -0.02, 0.04), "popularity baseline", 0.03).endswith(
        "< 3.0% threshold and CI not above 0"
    )


# -- scoring rankings ----------------------------------------------------------------------
def test_score_rankings_maps_ranker_apps_onto_the_holdout_and_averages_per_user():
    queries = build_queries(table([
        ("alice", "x", 1, 0), ("alice", "y", 1, 0), ("alice", "z", 1, 0),
        ("bob", "x", 1, 0), ("bob", "y", 1, 0),
    ]), seed=0)
    ranker_apps = ["y", "unknown-to-holdout", "x", "z"]
    # query order: alice x, alice y, alice z, bob x, bob y
    rankings = np.array([
        [0, 3] + [-1] * 8,      # alice/x -> y, z: both relevant
        [1, 2] + [-1] * 8,      # alice/y -> (unknown), x: one of two
        [1, -1] + [-1] * 8,     # alice/z -> nothing relevant
        [0] + [-1] * 9,         # bob/x -> y: hit
        [3, 2] + [-1] * 8,      # bob/y -> z (not bob's), x: hit
    ])
    scores = cmp.score_rankings(queries, rankings, ranker_apps, catalog_size=8,
                                ctr_predicted=np.array([0.2, 0.0]), ctr_observed=np.array([0.1, 0.3]))
    assert scores.per_user["recall_at_10"] == pytest.approx([(1 + 0.5 + 0) / 3, 1.0])
    assert scores.per_user["precision_at_10"] == pytest.approx([(0.2 + 0.1) / 3, 0.1])
    metrics = scores.metrics()
    assert metrics["recall_at_10"] == pytest.approx((0.5 + 1.0) / 2)  # users weigh the same
    assert metrics["coverage"] == pytest.approx(4 / 8)
    assert metrics["ctr_mae"] == pytest.approx(0.2)


def test_summarize_reports_every_metric_with_a_bootstrap_deviation():
    users = np.random.default_rng(0).uniform(0, 1, size=50)
    recommended = sparse.csr_matrix(np.eye(50, 20, dtype=bool))
    scores = cmp.RankerScores({name: users for name in cmp.METRIC_KEYS[:4]}, recommended, 20,
                              ctr_predicted=np.array([0.05, 0.05, 0.05]), ctr_observed=np.array([0.04, 0.03, 0.08]))
    summary = cmp.summarize(scores, samples=200, seed=0)
    assert list(summary) == list(cmp.METRIC_KEYS)
    assert summary["recall_at_10"]["value"] == pytest.approx(users.mean())
    # the standard deviation of a mean of 50 users is about std / sqrt(50)
    assert summary["recall_at_10"]["standard_deviation"] == pytest.approx(users.std() / np.sqrt(50), rel=0.3)
    assert summary["coverage"]["value"] == pytest.approx(1.0)
    assert 0 < summary["coverage"]["standard_deviation"] < 0.2  # resampled users cover fewer apps
    assert summary["ctr_mae"]["standard_deviation"] > 0
    assert summary == cmp.summarize(scores, samples=200, seed=0)


# -- the popularity baseline -----------------------------------------------------------------
def test_popularity_ranks_by_engaged_users_excluding_the_query_with_ties_by_app_id():
    train = table([
        ("u1", "b", 1, 0), ("u2", "b", 1, 0), ("u3", "b", 0, 1),  # b: 3 users
        ("u1", "a", 1, 0), ("u2", "a", 1, 0),                     # a: 2 users, ties with c
        ("u1", "c", 3, 0), ("u3", "c", 1, 0),                     # c: 2 users
        ("u1", "d", 1, 0), ("u1", "e", 0, 0),                     # d: 1 user; e: no positive
    ])
    rankings, app_ids = cmp.popularity_rankings(train, ["b", "a", "zzz"], k=3)
    assert app_ids == ["b", "a", "c", "d"]
    named = [[app_ids[p] if p >= 0 else None for p in row] for row in rankings]
    assert named == [["a", "c", "d"], ["b", "c", "d"], ["b", "a", "c"]]


def test_popularity_pads_when_train_has_few_apps():
    train = table([("u1", "x", 1, 0), ("u1", "y", 1, 0), ("u2", "y", 1, 0)])
    rankings, app_ids = cmp.popularity_rankings(train, ["y"], k=3)
    assert [app_ids[p] if p >= 0 else None for p in rankings[0]] == ["x", None, None]


def test_a_longer_popularity_ranking_starts_with_the_shorter_one():
    # EvaluateCandidate computes the report's top-50 once and scores its first 10 columns for the gate
    train = table([(f"u{u}", f"app{a:02d}", 1, 0) for a in range(30) for u in range(a % 7 + 1)])
    queries = ["app00", "app06", "app13", "app29", "unknown"]
    long, long_ids = cmp.popularity_rankings(train, queries, k=20)
    short, short_ids = cmp.popularity_rankings(train, queries, k=10)
    assert long_ids == short_ids and np.array_equal(long[:, :10], short)
