"""The exact top-k loop shared by the trainer's validation and the bench's oracles."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import topk


def test_top_k_excluding_lists_the_largest_scores_best_first_without_the_row_itself():
    rng = np.random.default_rng(3)
    for rows, columns, k in ((40, 5_000, 10), (6, 12, 10), (3, 4, 3)):
        scores = rng.integers(0, 6, size=(rows, columns)).astype(np.float32)  # many ties: the lower column first
        own = rng.integers(0, columns, size=rows)
        expected = [[column for column in np.lexsort((np.arange(columns), -row)) if column != skip][:k]
                    for row, skip in zip(scores, own)]
        assert topk.top_k_excluding(scores.copy(), own, k).tolist() == expected


@pytest.mark.parametrize("block_cells", [10**9, 7 * 500])  # one block, and many
def test_query_top_k_ranks_every_scoring_of_each_distinct_query_once(block_cells):
    rng = np.random.default_rng(8)
    apps = [f"app{i:03d}" for i in range(500)]
    table = rng.integers(0, 20, size=(len(apps), len(apps))).astype(np.float64)  # ties: the lower position first
    weights = (np.ones(len(apps)), rng.uniform(0.5, 2.0, len(apps)))
    queries = [apps[i] for i in rng.integers(0, len(apps), 120)] + ["not-in-the-catalog"]
    asked: list[int] = []

    def score_rows(rows):
        asked.extend(rows.tolist())
        for weight in weights:
            yield table[rows] * weight

    rankings = topk.query_top_k(apps, queries, 10, score_rows, count=len(weights), block_cells=block_cells)
    assert sorted(asked) == sorted({apps.index(q) for q in queries[:-1]})  # each distinct known query app once
    for weight, ranking in zip(weights, rankings):
        assert ranking.shape == (len(queries), 10)
        for query, row in zip(queries[:-1], ranking):
            scores = table[apps.index(query)] * weight
            scores[apps.index(query)] = -np.inf
            assert row.tolist() == np.argsort(-scores, kind="stable")[:10].tolist()
        assert (ranking[-1] == topk.PADDING).all()


def test_a_catalog_smaller_than_k_pads_and_a_failing_scorer_raises():
    rankings = topk.query_top_k(["a", "b", "c"], ["a", "c"], 5, lambda rows: [np.array([[0.0, 2.0, 1.0]] * len(rows))])
    assert rankings[0].tolist() == [[1, 2, -1, -1, -1], [1, 0, -1, -1, -1]]

    def broken(rows):
        raise ValueError("no scores for these rows")

    with pytest.raises(ValueError, match="no scores"):
        topk.query_top_k([f"x{i}" for i in range(50)], [f"x{i}" for i in range(50)], 3, broken, block_cells=100)
