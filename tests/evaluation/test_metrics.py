import math

import numpy as np
import pytest

from evaluation.metrics import (
    RelevantSets,
    catalog_coverage,
    distinct_integers,
    group_mean,
    hit_matrix,
    mean_absolute_error,
    ranking_metrics,
)


def metrics_of(ranking: list[int], relevant: set[int]) -> dict[str, float]:
    k = len(ranking)
    values = ranking_metrics(np.array([ranking]), RelevantSets.from_lists([relevant]))
    return {name.replace(f"_at_{k}", ""): float(v[0]) for name, v in values.items()}


# -- an independent, straightforward implementation (one query at a time) ---------------
def reference_metrics(ranking: list[int], relevant: set[int]) -> dict[str, float]:
    k = len(ranking)
    if not relevant:
        return {"recall": math.nan, "precision": math.nan, "ndcg": math.nan, "map": math.nan}
    seen: set[int] = set()
    hits = []
    for item in ranking:
        hits.append(item != -1 and item in relevant and item not in seen)
        seen.add(item)
    denominator = min(len(relevant), k)
    dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
    idcg = sum(1 / math.log2(i + 2) for i in range(denominator))
    ap, found = 0.0, 0
    for i, hit in enumerate(hits):
        if hit:
            found += 1
            ap += found / (i + 1)
    return {
        "recall": sum(hits) / denominator,
        "precision": sum(hits) / k,
        "ndcg": dcg / idcg,
        "map": ap / denominator,
    }


def test_hand_computed_case():
    # hits at positions 2 and 3 of 4; three relevant items
    values = metrics_of([5, 1, 7, -1], {1, 7, 9})
    assert values["recall"] == pytest.approx(2 / 3)
    assert values["precision"] == pytest.approx(2 / 4)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert values["ndcg"] == pytest.approx(dcg / idcg)
    assert values["map"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_fewer_relevant_than_k_can_still_score_one():
    values = metrics_of([3, 8, 9, 10], {3})
    assert values == pytest.approx({"recall": 1.0, "precision": 0.25, "ndcg": 1.0, "map": 1.0})


def test_more_relevant_than_k_normalises_by_k():
    values = metrics_of([4, 2], {1, 2, 3, 4, 5})
    assert values == pytest.approx({"recall": 1.0, "precision": 1.0, "ndcg": 1.0, "map": 1.0})


def test_a_repeated_item_counts_once():
    hits = hit_matrix(np.array([[1, 1, 2]]), RelevantSets.from_lists([{1, 2}]))
    assert hits.tolist() == [[True, False, True]]
    values = metrics_of([1, 1, 2], {1, 2})
    assert values["recall"] == pytest.approx(1.0)
    assert values["precision"] == pytest.approx(2 / 3)


def test_padding_never_hits_and_no_hits_scores_zero():
    values = metrics_of([-1, -1, -1], {4, 5})
    assert values == pytest.approx({"recall": 0.0, "precision": 0.0, "ndcg": 0.0, "map": 0.0})


def test_empty_relevant_set_is_undefined_and_skipped_by_group_mean():
    values = ranking_metrics(np.array([[1, 2], [1, 2]]), RelevantSets.from_lists([set(), {2}]))
    assert all(math.isnan(v[0]) for v in values.values())
    recall = values["recall_at_2"]
    assert recall[1] == pytest.approx(1.0)
    # user 0 owns both queries (the empty one is skipped), user 1 owns none
    assert np.allclose(group_mean(recall, np.array([0, 0]), 2), [1.0, np.nan], equal_nan=True)


def test_group_mean_weights_each_query_once_per_group():
    means = group_mean(np.array([1.0, 0.0, 0.5, 0.25]), np.array([0, 0, 1, 2]), 3)
    assert means.tolist() == [0.5, 0.5, 0.25]


def test_vectorised_metrics_agree_with_the_reference_on_random_cases():
    rng = np.random.default_rng(7)
    n_items, k = 30, 10
    rankings, relevant = [], []
    for _ in range(400):
        ranking = rng.integers(-1, n_items, size=k).tolist()  # repeats and padding included
        size = int(rng.integers(0, 15))
        rankings.append(ranking)
        relevant.append(set(rng.choice(n_items, size=size, replace=False).tolist()))
    vectorised = ranking_metrics(np.array(rankings), RelevantSets.from_lists(relevant))
    for i, (ranking, rel) in enumerate(zip(rankings, relevant)):
        expected = reference_metrics(ranking, rel)
        for name, value in expected.items():
            actual = vectorised[f"{name}_at_{k}"][i]
            assert (math.isnan(value) and math.isnan(actual)) or actual == pytest.approx(value), (i, name)


def test_rankings_must_match_the_number_of_queries():
    with pytest.raises(ValueError, match="n_queries=2"):
        hit_matrix(np.array([[1, 2]]), RelevantSets.from_lists([{1}, {2}]))


def test_catalog_coverage_counts_distinct_ranked_items():
    assert catalog_coverage(np.array([[0, 1, -1], [1, 2, -1]]), 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="catalog_size"):
        catalog_coverage(np.array([[0]]), 0)


def test_mean_absolute_error():
    assert mean_absolute_error(np.array([0.1, 0.3]), np.array([0.2, 0.2])) == pytest.approx(0.1)
    assert math.isnan(mean_absolute_error(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="shape"):
        mean_absolute_error(np.array([0.1]), np.array([0.1, 0.2]))


def test_ndcg_agrees_with_scikit_learn_on_full_rankings():
    """scikit-learn's ``ndcg_score`` as an independent oracle. It needs dense (queries x catalog) scores, which
    evaluation cannot afford at scale (20K queries x 200K apps), so the hit-matrix version stays in production."""
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(11)
    n_items, k = 40, 10
    rankings = np.array([rng.permutation(n_items)[:k] for _ in range(200)])  # no padding, no repeats: k real items
    relevant = [set(rng.choice(n_items, size=int(rng.integers(1, 15)), replace=False).tolist()) for _ in range(200)]
    truth = np.zeros((len(rankings), n_items))
    scores = np.zeros((len(rankings), n_items))
    for row, (ranking, rel) in enumerate(zip(rankings, relevant)):
        truth[row, list(rel)] = 1.0
        scores[row, ranking] = np.arange(k, 0, -1)  # the ranked items first, in order; every other item below them
    ours = ranking_metrics(rankings, RelevantSets.from_lists(relevant))[f"ndcg_at_{k}"]
    per_query = [ndcg_score(truth[row : row + 1], scores[row : row + 1], k=k) for row in range(len(rankings))]
    assert np.allclose(ours, per_query)
    assert float(ours.mean()) == pytest.approx(ndcg_score(truth, scores, k=k))


def test_distinct_integers_is_np_unique():
    rng = np.random.default_rng(3)
    for values in (rng.integers(-50, 50, 1_000), rng.integers(0, 10**12, (40, 10)), np.array([], dtype=np.int64),
                   np.array([7, 7, 7])):
        assert np.array_equal(distinct_integers(values), np.unique(values))
