"""Baseline rankers: each checked against an independent brute-force computation on small data, and
scored through the same code as the candidate (compare.score_rankings)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from evaluation import baselines
from evaluation.compare import score_rankings
from evaluation.holdout import build_queries
from evaluation.metrics import PADDING
from models import dataset
from models.embedding import asymmetric_vectors, interaction_matrix
from tests.models.coengagement_world import cluster_of, make_world

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def interactions(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"user_id": u, "app_id": a, "clicks": c, "conversions": 0, "first_ts": T, "last_ts": T}
                         for u, a, c in rows], columns=list(dataset.INTERACTION_COLUMNS))


def brute_force_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row: columns by descending score, ties by column, -inf entries never listed (padding)."""
    out = np.full((scores.shape[0], k), PADDING)
    for row, values in enumerate(scores):
        order = sorted((c for c in range(len(values)) if np.isfinite(values[c])), key=lambda c: (-values[c], c))[:k]
        out[row, : len(order)] = order
    return out


@pytest.fixture(scope="module")
def world():
    return make_world(warm_per_cluster=20, cold_per_cluster=3, users=300, seed=4)


def test_item_knn_is_cosine_of_engagement_columns_query_excluded_unknown_padded():
    train = interactions([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "c", 1), ("u3", "b", 1),
                          ("u3", "c", 3), ("u4", "d", 1)])
    ranking = baselines.item_knn(train, ["a", "a", "d", "zz"], k=3)
    assert ranking.app_ids == ["a", "b", "c", "d"]
    matrix = interaction_matrix(train, ranking.app_ids, 3.0).matrix.toarray()
    unit = matrix / np.linalg.norm(matrix, axis=0)
    cosine = unit.T @ unit
    cosine[cosine <= 0] = -np.inf
    np.fill_diagonal(cosine, -np.inf)
    expected = brute_force_top(cosine, 3)
    assert ranking.rankings[0].tolist() == ranking.rankings[1].tolist() == expected[0].tolist()
    # d shares no user with anyone: nothing to recommend; an unknown app gets padding too.
    assert ranking.rankings[2].tolist() == ranking.rankings[3].tolist() == [PADDING] * 3


def test_item_knn_agrees_with_brute_force_on_random_data():
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"app{a:02d}", int(rng.integers(1, 4))) for u in range(60) for a in rng.choice(25, 4, replace=False)]
    train = interactions(rows)
    apps = sorted({a for _, a, _ in rows})
    ranking = baselines.item_knn(train, apps, k=5)
    matrix = interaction_matrix(train, apps, 3.0).matrix.toarray().astype(np.float64)
    unit = matrix / np.linalg.norm(matrix, axis=0)
    cosine = (unit.T @ unit).astype(np.float32)
    cosine[cosine <= 0] = -np.inf
    np.fill_diagonal(cosine, -np.inf)
    expected = brute_force_top(cosine, 5)
    # float32 ties may order differently: compare the scores at each position instead of the ids.
    found_scores = np.take_along_axis(cosine, np.where(ranking.rankings >= 0, ranking.rankings, 0), axis=1)
    expected_scores = np.take_along_axis(cosine, np.where(expected >= 0, expected, 0), axis=1)
    assert np.allclose(found_scores, expected_scores, atol=1e-5)


def random_train(seed: int) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"app{a:02d}", int(rng.integers(1, 4))) for u in range(60) for a in rng.choice(25, 4, replace=False)]
    return interactions(rows), sorted({a for _, a, _ in rows})


def assert_same_scores_at_each_position(ranking: baselines.Ranking, scores: np.ndarray, k: int) -> None:
    """Positive scores only, the query excluded; float ties may order differently, so compare scores per position."""
    scores = scores.astype(np.float64).copy()
    scores[scores <= 1e-12] = -np.inf
    np.fill_diagonal(scores, -np.inf)
    expected = brute_force_top(scores, k)
    assert ((ranking.rankings >= 0) == (expected >= 0)).all()
    found_scores = np.take_along_axis(scores, np.where(ranking.rankings >= 0, ranking.rankings, 0), axis=1)
    expected_scores = np.take_along_axis(scores, np.where(expected >= 0, expected, 0), axis=1)
    assert np.allclose(found_scores, expected_scores, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.5, 0.7)])
def test_rp3beta_is_the_three_step_walk_with_a_popularity_penalty(alpha, beta):
    train, apps = random_train(5)
    ranking = baselines.rp3beta(train, apps, k=5, alpha=alpha, beta=beta)
    matrix = interaction_matrix(train, apps, 3.0).matrix.toarray().astype(np.float64)
    app_to_user = (matrix / matrix.sum(axis=0)).T ** alpha          # P(u | i)
    user_to_app = (matrix / matrix.sum(axis=1, keepdims=True)) ** alpha  # P(j | u)
    degree = (matrix > 0).sum(axis=0)
    assert_same_scores_at_each_position(ranking, app_to_user @ user_to_app / degree ** beta, 5)


def test_rp3beta_beta_moves_neighbours_away_from_popular_apps():
    # Every user has "hub"; q's own users also have "niche".
    rows = [(f"u{u}", "hub", 1) for u in range(20)] + [("u0", "q", 1), ("u1", "q", 1), ("u0", "niche", 1), ("u1", "niche", 1)]
    def best(beta: float) -> str:
        ranking = baselines.rp3beta(interactions(rows), ["q"], k=1, beta=beta)
        return ranking.app_ids[ranking.rankings[0, 0]]

    assert (best(0.0), best(1.0)) == ("hub", "niche")


def test_ease_is_the_zero_diagonal_ridge_regression():
    train, apps = random_train(6)
    ranking = baselines.ease(train, apps, k=5, l2=3.0)
    binary = (interaction_matrix(train, apps, 3.0).matrix.toarray() > 0).astype(np.float64)
    # B minimises |X - XB|^2 + l2 |B|^2 with diag(B) = 0: solve each column's regression on the other columns.
    weights = np.zeros((len(apps), len(apps)))
    for j in range(len(apps)):
        others = [i for i in range(len(apps)) if i != j]
        design = binary[:, others]
        weights[others, j] = np.linalg.solve(design.T @ design + 3.0 * np.eye(len(others)), design.T @ binary[:, j])
    assert_same_scores_at_each_position(ranking, weights, 5)


def test_ease_refuses_a_catalog_too_large_for_a_dense_inverse():
    train, apps = random_train(7)
    with pytest.raises(baselines.BaselineError, match="dense 25 x 25 matrix"):
        baselines.ease(train, apps, k=5, max_apps=10)


def test_embedding_rankings_search_items_by_inner_product_with_the_query_excluded():
    rng = np.random.default_rng(8)
    factors = rng.standard_normal((40, 6)) * rng.uniform(0.1, 3.0, (40, 1))  # very different norms
    ids = [f"app{i:02d}" for i in range(40)]
    queries, items = asymmetric_vectors(factors)
    ranking = baselines.embedding_rankings("mips", ids, queries, ids, k=5, item_vectors=items)
    inner = factors @ factors.T
    np.fill_diagonal(inner, -np.inf)
    assert ranking.rankings.tolist() == brute_force_top(inner, 5).tolist()
    # Without item vectors it is cosine, which orders differently when norms differ.
    cosine = baselines.embedding_rankings("cos", ids, factors, ids, k=5)
    unit = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    expected_cosine = unit @ unit.T
    np.fill_diagonal(expected_cosine, -np.inf)
    assert cosine.rankings.tolist() == brute_force_top(expected_cosine, 5).tolist()
    assert cosine.rankings.tolist() != ranking.rankings.tolist()


def test_content_only_finds_same_category_apps_from_metadata_alone(world):
    catalog, _, _ = world
    ids = catalog["app_id"].tolist()
    ranking = baselines.content_only(catalog, ids, k=5, dim=8, seed=1)
    clusters = np.array([cluster_of(a) for a in ranking.app_ids])
    same = clusters[ranking.rankings] == np.array([cluster_of(a) for a in ids])[:, None]
    assert same.mean() > 0.8  # four categories: chance is 0.25
    app_ids, vectors = baselines.content_embeddings(catalog, dim=8, seed=1)
    assert app_ids == ids and vectors.shape == (len(ids), 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_content_only_above_the_exact_limit_searches_an_ivf_index_and_says_so(world):
    catalog, _, _ = world
    ids = catalog["app_id"].tolist()
    exact = baselines.content_only(catalog, ids, k=5, dim=8, seed=1)
    approximate = baselines.content_only(catalog, ids, k=5, dim=8, seed=1, exact_max_apps=len(ids) - 1)
    assert exact.note == ""
    assert approximate.note.startswith(f"content-only: {len(ids)} catalog apps (more than {len(ids) - 1}), so searched "
                                       "with an IVF index (nlist 2, nprobe 2) like a model's: recall@10 against exact "
                                       f"search 1.000 on {len(ids)} catalog apps")
    # both lists probed: an exhaustive search, so the exact search's neighbours
    assert np.array_equal(approximate.rankings, exact.rankings)


def test_popularity_is_the_pipeline_baseline():
    train = interactions([("u1", "a", 1), ("u2", "a", 1), ("u3", "a", 1), ("u1", "b", 1), ("u2", "b", 1), ("u1", "c", 1)])
    ranking = baselines.popularity(train, ["a", "c"], k=2)
    names = [[ranking.app_ids[i] for i in row] for row in ranking.rankings]
    assert names == [["b", "c"], ["a", "b"]]


def test_oracle_ranks_by_latent_cosine():
    latent = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ranking = baselines.oracle(["w", "x", "y", "z"], latent, ["w", "y"], k=1)
    assert [[ranking.app_ids[i] for i in row] for row in ranking.rankings] == [["x"], ["z"]]


def _engagement(slope, targeted, queries=("q",), k=3):
    latent = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.05], [0.0, 1.0]])  # q, a (near), b (near, other cluster), c (far)
    ranking = baselines.engagement_oracle(["q", "a", "b", "c"], latent, np.array([0, 0, 1, 0]),
                                          np.array([0.1, 0.1, 0.3, 0.5]), list(queries), k,
                                          targeted_fraction=targeted, click_bias=-5.0, click_slope=slope)
    return [[ranking.app_ids[i] if i >= 0 else None for i in row] for row in ranking.rankings]


def test_engagement_oracle_weighs_exposure_against_affinity():
    # Clicks follow affinity: the near app of q's cluster first; fully targeted ads never show b to q's users.
    assert _engagement(slope=10.0, targeted=1.0) == [["a", "c", "b"]]
    # No affinity effect: exposure alone, the popular app of q's cluster first.
    assert _engagement(slope=0.0, targeted=1.0) == [["c", "a", "b"]]
    # Untargeted ads: b's popularity and nearness put it first; the query is never its own neighbour.
    assert _engagement(slope=10.0, targeted=0.0) == [["b", "a", "c"]]
    assert _engagement(slope=10.0, targeted=1.0, queries=("q", "nobody"), k=2) == [["a", "c"], [None, None]]


def test_engagement_oracle_matches_brute_force_across_blocks(monkeypatch):
    rng = np.random.default_rng(5)
    n = 300
    latent, cluster, popularity = rng.normal(size=(n, 4)), rng.integers(0, 5, n), rng.dirichlet(np.ones(n))
    ids = [f"app-{i}" for i in range(n)]
    monkeypatch.setattr(baselines, "ORACLE_CELLS", 7 * n)  # several query blocks
    queries = [ids[i] for i in rng.integers(0, n, 40)]
    ranking = baselines.engagement_oracle(ids, latent, cluster, popularity, queries, 5, targeted_fraction=0.75,
                                          click_bias=-5.0, click_slope=6.5)
    unit = latent / np.linalg.norm(latent, axis=1, keepdims=True)
    mass = np.bincount(cluster, weights=popularity)
    for query, row in zip(queries, ranking.rankings):
        q = ids.index(query)
        exposure = popularity * (0.25 + 0.75 * (cluster == cluster[q]) / mass[cluster[q]])
        score = exposure / (1 + np.exp(-(-5.0 + 6.5 * unit @ unit[q])))
        score[q] = -np.inf
        assert list(row) == list(np.argsort(-score, kind="stable")[:5])


@pytest.mark.parametrize("method", ["als", "bpr"])
def test_implicit_models_learn_the_clusters(world, method):
    pytest.importorskip("implicit")
    _, train, _ = world
    ids, factors = baselines.implicit_embeddings(train, method, dim=8, seed=1,
                                                 **({"iterations": 300} if method == "bpr" else {}))
    assert ids == sorted(train["app_id"].unique()) and factors.shape[0] == len(ids)
    ranking = baselines.embedding_rankings(method, ids, factors, ids, k=5)
    clusters = np.array([cluster_of(a) for a in ids])
    assert (clusters[ranking.rankings] == clusters[:, None]).mean() > 0.5  # chance is 0.25


def test_a_baseline_is_scored_by_the_same_code_as_a_model():
    holdout = interactions([("h1", "a", 1), ("h1", "b", 1), ("h2", "c", 1), ("h2", "a", 1)])
    queries = build_queries(holdout, seed=0)
    train = interactions([("u1", "a", 1), ("u1", "b", 1), ("u2", "b", 1), ("u2", "c", 1)])
    ranking = baselines.item_knn(train, queries.query_app_ids, k=10)
    scores = score_rankings(queries, ranking.rankings, ranking.app_ids, catalog_size=3,
                            ctr_predicted=np.zeros(0), ctr_observed=np.zeros(0)).metrics()
    # h1: a -> b (hit), b -> a (hit); h2: a -> b only (miss c), c -> b only (miss a): users 1.0 and 0.0.
    assert scores["recall_at_10"] == pytest.approx(0.5)


def test_bad_inputs_name_the_problem():
    with pytest.raises(baselines.BaselineError, match="no positive"):
        baselines.item_knn(interactions([("u1", "a", 0)]), ["a"], k=3)
    with pytest.raises(baselines.BaselineError, match="not one of als, bpr"):
        baselines.implicit_embeddings(interactions([("u1", "a", 1), ("u1", "b", 1)]), "svd", dim=2, seed=0)
    with pytest.raises(baselines.BaselineError, match="app ids"):
        baselines.embedding_rankings("x", ["a"], np.ones((2, 3)), ["a"], k=1)
