"""The co-engagement + metadata trainer on a small synthetic world with known clusters."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from models.embedding import (EmbeddingParams, TrainingDataError, asymmetric_vectors, interaction_matrix,
                              normalize_degrees, popularity_degrees, train_embeddings, truncated_svd)
from tests.models.coengagement_world import cluster_of, make_world

PARAMS = EmbeddingParams(embedding_dim=16, seed=3)


def _neighbours(embeddings: np.ndarray, rows: np.ndarray, among: np.ndarray, k: int) -> np.ndarray:
    scores = embeddings[rows] @ embeddings[among].T
    scores[rows[:, None] == among[None, :]] = -np.inf  # never the app itself
    return among[np.argsort(-scores, axis=1)[:, :k]]


def _same_cluster_share(app_ids: list[str], rows: np.ndarray, neighbours: np.ndarray) -> float:
    clusters = np.array([cluster_of(a) for a in app_ids])
    return float((clusters[neighbours] == clusters[rows][:, None]).mean())


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def trained(world):
    catalog, train, _ = world
    return train_embeddings(catalog, train, PARAMS)


def test_every_catalog_app_gets_a_unit_float32_embedding(world, trained):
    catalog, _, _ = world
    assert trained.app_ids == sorted(catalog["app_id"])
    assert trained.embeddings.dtype == np.float32 and trained.embeddings.shape == (len(catalog), 16)
    assert np.allclose(np.linalg.norm(trained.embeddings, axis=1), 1.0, atol=1e-5)
    assert trained.summary["warm_apps"] == 120 and trained.summary["cold_apps"] == 20


def test_co_engagement_alone_recovers_the_clusters(world):
    """Metadata shuffled across apps carries no cluster signal: the neighbours must come from co-engagement."""
    catalog, train, _ = world
    shuffled = catalog.copy()
    order = np.random.default_rng(0).permutation(len(catalog))
    for column in ("category", "features", "description"):
        shuffled[column] = catalog[column].to_numpy()[order]
    result = train_embeddings(shuffled, train, PARAMS)
    warm = np.flatnonzero(result.engaged_users >= 5)
    share = _same_cluster_share(result.app_ids, warm, _neighbours(result.embeddings, warm, warm, 5))
    assert share > 0.8  # chance is 0.25 with four clusters


def test_cold_apps_land_near_their_category(trained):
    cold = np.flatnonzero(trained.engaged_users == 0)
    warm = np.flatnonzero(trained.engaged_users > 0)
    assert len(cold) == 20
    share = _same_cluster_share(trained.app_ids, cold, _neighbours(trained.embeddings, cold, warm, 5))
    assert share > 0.8


def test_apps_with_little_evidence_lean_on_their_metadata(world):
    """An app whose metadata says finance but whose only users are puzzle players: CF pulls it
    towards puzzles in proportion to its evidence, n / (n + shrinkage)."""
    catalog, train, _ = world
    stray = catalog.loc[catalog["app_id"] == "finance-034"].assign(app_id="stray")
    puzzle_users = train.loc[train["app_id"].str.startswith("puzzle"), "user_id"].drop_duplicates().sort_values()

    def puzzle_affinity(users: int) -> float:
        rows = pd.DataFrame({"user_id": puzzle_users.iloc[:users], "app_id": "stray", "clicks": 2, "conversions": 0,
                             "first_ts": train["first_ts"].iloc[0], "last_ts": train["last_ts"].iloc[0]})
        result = train_embeddings(pd.concat([catalog, stray]), pd.concat([train, rows]), PARAMS)
        position = {a: i for i, a in enumerate(result.app_ids)}
        vectors = result.embeddings
        puzzle = vectors[[position[a] for a in result.app_ids if a.startswith("puzzle")]].mean(axis=0)
        finance = vectors[[position[a] for a in result.app_ids if a.startswith("finance")]].mean(axis=0)
        return float(vectors[position["stray"]] @ puzzle - vectors[position["stray"]] @ finance)

    few, many = puzzle_affinity(1), puzzle_affinity(60)
    assert few < 0 < many


def test_training_is_deterministic_and_independent_of_row_order(world, trained):
    catalog, train, _ = world
    again = train_embeddings(catalog.sample(frac=1.0, random_state=1), train.sample(frac=1.0, random_state=2), PARAMS)
    digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()  # noqa: E731
    assert digest(again.embeddings) == digest(trained.embeddings)


def test_interactions_for_unknown_apps_are_dropped_and_counted(world):
    catalog, train, _ = world
    extra = train.iloc[:3].assign(app_id="not-in-catalog")
    built = interaction_matrix(pd.concat([train, extra]), sorted(catalog["app_id"]), conversion_weight=3.0)
    assert built.dropped_unknown_apps == 3
    assert built.used_rows == len(train) and built.matrix.nnz == len(train)
    row = train.iloc[0]
    users = sorted(train["user_id"].unique())
    value = built.matrix[users.index(row["user_id"]), sorted(catalog["app_id"]).index(row["app_id"])]
    assert value == pytest.approx(np.log1p(row["clicks"] + 3.0 * row["conversions"]))


def test_no_usable_interactions_is_a_clear_error(world):
    catalog, train, _ = world
    with pytest.raises(TrainingDataError, match="none of the .* train interactions"):
        train_embeddings(catalog, train.assign(app_id="elsewhere"), PARAMS)
    with pytest.raises(TrainingDataError, match="more than once"):
        train_embeddings(pd.concat([catalog, catalog.iloc[:1]]), train, PARAMS)


def test_truncated_svd_matches_the_exact_decomposition():
    rng = np.random.default_rng(5)
    low_rank = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 80)) + 0.01 * rng.standard_normal((300, 80))
    matrix = sparse.csr_matrix(low_rank.astype(np.float32))
    values, vectors = truncated_svd(matrix, rank=5, seed=1)
    _, exact_values, exact_vectors_t = np.linalg.svd(low_rank, full_matrices=False)
    assert np.allclose(values, exact_values[:5], rtol=1e-3)
    assert np.allclose(np.abs(vectors.T @ exact_vectors_t[:5].T).diagonal(), 1.0, atol=1e-3)
    # A matrix of lower rank than asked gives only the vectors it has.
    rank_two = sparse.csr_matrix(np.outer(np.arange(1, 31), np.ones(10)) + np.outer(np.ones(30), np.arange(10)))
    assert len(truncated_svd(rank_two, rank=8, seed=1)[0]) == 2


def test_query_and_item_vectors_rank_by_the_inner_product_of_the_factors():
    rng = np.random.default_rng(2)
    factors = rng.standard_normal((30, 5)) * rng.uniform(0.05, 2.0, (30, 1))
    factors[7] = 0.0  # an app with no factor at all
    queries, items = asymmetric_vectors(factors)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0)
    assert np.allclose(np.linalg.norm(np.delete(queries, 7, axis=0), axis=1), 1.0) and not queries[7].any()
    assert (queries[:, -1] == 0).all()
    scores, inner = queries @ items.T, factors @ factors.T
    for row in np.delete(np.arange(30), 7):
        assert np.argsort(-scores[row], kind="stable").tolist() == np.argsort(-inner[row], kind="stable").tolist()


def test_index_vectors_are_unit_and_cold_apps_embed_as_serving_embeds_them(world, trained):
    catalog, _, _ = world
    assert trained.item_vectors.shape == trained.embeddings.shape and trained.item_vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(trained.item_vectors, axis=1), 1.0, atol=1e-5)
    cold = np.flatnonzero(trained.engaged_users == 0)
    rows = catalog.set_index("app_id").loc[[trained.app_ids[i] for i in cold]].reset_index()
    # Serving embeds a new app with the stored encoder: it must land where training put the cold apps.
    assert np.allclose(trained.encoder.embed(rows), trained.embeddings[cold], atol=1e-5)


def test_a_one_dimensional_embedding_is_refused(world):
    catalog, train, _ = world
    with pytest.raises(TrainingDataError, match="embedding_dim must be at least 2"):
        train_embeddings(catalog, train, EmbeddingParams(embedding_dim=1))


def test_degree_normalisation_adds_the_regularisation_to_every_nonzero_degree():
    matrix = sparse.csr_matrix(np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    users, apps = np.array([3.0, 3.0]), np.array([1.0, 5.0])  # nonzero degrees; mean 3 and 3
    tau = 0.5
    expected = np.zeros((3, 3))
    for (u, a), value in zip([(0, 0), (0, 1), (1, 1)], [1.0, 2.0, 3.0]):
        expected[u, a] = value / np.sqrt(users[u] + tau * 3.0) / (apps[a] + tau * 3.0) ** 0.25
    found = normalize_degrees(matrix, user_exponent=0.5, app_exponent=0.25, regularization=tau).toarray()
    assert np.allclose(found, expected, rtol=1e-6)


def test_recent_popularity_decays_each_engagement_by_its_age_over_the_span():
    start = pd.Timestamp("2026-01-01", tz="UTC")
    days = [0, 0, 10, 10, 10]  # "old" engaged on day 0 only, "new" on day 10, the latest first engagement
    interactions = pd.DataFrame({"user_id": ["a", "b", "a", "b", "c"], "app_id": ["old", "old", "new", "new", "new"],
                                 "clicks": [1, 3, 1, 1, 0], "conversions": [0, 0, 0, 0, 1],
                                 "first_ts": [start + pd.Timedelta(days=d) for d in days],
                                 "last_ts": [start + pd.Timedelta(days=d + 1) for d in days]})
    app_ids = ["new", "old"]
    matrix = interaction_matrix(interactions, app_ids, conversion_weight=3.0).matrix
    strength = np.log1p([1.0, 3.0, 1.0, 1.0, 3.0])
    plain = popularity_degrees(interactions, app_ids, matrix, EmbeddingParams())
    assert np.allclose(plain, [strength[2:].sum(), strength[:2].sum()])
    recent = popularity_degrees(interactions, app_ids, matrix, EmbeddingParams(popularity_recency=0.25))
    # age 10 days of a 10-day span, time constant 0.25 x 10 days: exp(-4)
    assert np.allclose(recent, [strength[2:].sum(), strength[:2].sum() * np.exp(-4.0)])
    with pytest.raises(TrainingDataError, match="first_ts"):
        popularity_degrees(interactions.drop(columns="first_ts"), app_ids, matrix, EmbeddingParams(popularity_recency=0.1))


def test_recent_popularity_lifts_recently_engaged_apps_in_the_index(world):
    catalog, train, _ = world
    # the puzzle apps' engagement moved to the end of the window: recency must raise their item-side weight
    late = train.assign(first_ts=np.where(train["app_id"].str.startswith("puzzle"), train["last_ts"].max(),
                                          train["first_ts"].min()))
    def puzzle_weight(recency: float) -> float:
        result = train_embeddings(catalog, late, EmbeddingParams(embedding_dim=16, seed=3, popularity_exponent=0.5,
                                                                 popularity_recency=recency))
        weight = np.linalg.norm(result.item_vectors[:, :-1], axis=1)  # |f| / max |f|: the item side's popularity
        puzzle = np.array([a.startswith("puzzle") for a in result.app_ids]) & (result.engaged_users > 0)
        return float(weight[puzzle].mean() / weight[~puzzle & (result.engaged_users > 0)].mean())
    assert puzzle_weight(0.1) > 2 * puzzle_weight(0.0)
    with pytest.raises(TrainingDataError, match="popularity_recency must be 0"):
        train_embeddings(catalog, train, EmbeddingParams(embedding_dim=16, popularity_recency=-1.0))



def test_truncated_svd_spans_what_scikit_learns_randomized_svd_finds():
    """Ours is scikit-learn's algorithm arranged for speed (models/embedding.py): on a sparse, slowly decaying
    spectrum, where the power iterations have not converged, both must still give the same app inner products."""
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(11)
    users, apps = 3000, 400
    popularity = 1.0 / np.arange(1, apps + 1) ** 0.8
    rows = np.repeat(np.arange(users), 12)
    columns = rng.choice(apps, size=rows.size, p=popularity / popularity.sum())
    matrix = sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, columns)), shape=(users, apps))
    matrix.sum_duplicates()
    values, vectors = truncated_svd(matrix, rank=24, seed=3)
    _, reference_values, reference_t = randomized_svd(matrix.astype(np.float64), 24, n_oversamples=10, n_iter=4,
                                                      transpose=False, random_state=3)
    assert np.allclose(values, reference_values, rtol=1e-5)  # another seed or fewer passes: >1e-2
    ours = (vectors * values) @ (vectors * values).T
    theirs = (reference_t.T * reference_values) @ (reference_t * reference_values[:, None])
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
