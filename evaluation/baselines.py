"""Baseline rankers, scored by the same code as the candidate (``evaluation/compare.py``).

Every baseline answers the evaluation's question, "which apps are most like query app q?", as
a ``Ranking``: for each query app its top-k other apps (positions into the ranking's own app
list, ``-1`` padding where it has nothing to offer, e.g. an app it never saw). That is the shape
``compare.score_rankings`` takes, so a baseline and a model are scored on the same queries by the
same metric code.

- **popularity**: the most engaged apps for every query (``compare.popularity_rankings``).
- **content-only**: metadata alone. The encoder's IDF-weighted token blocks
  (``models/features.py``, without the bias) reduced by a truncated SVD (LSA) to the embedding
  dimension, cosine neighbours. LSA rather than exact token cosine because an exact sparse
  product over 200K catalogs costs ~10^10 operations; at the same dimension it is also the
  like-for-like comparison for a cold app's metadata embedding.
- **item-kNN**: cosine between apps' columns of the user x app engagement matrix (the one the
  trainer builds), computed only for the query apps, in blocks, never as an app x app matrix.
- **RP3beta** (Paudel et al. 2016): a random walk app -> user -> app with a popularity penalty,
  exact and sparse, computed like item-kNN for the query apps only.
- **EASE** (Steck 2019): the closed-form item-item ridge regression with a zero diagonal, where a
  dense app x app matrix fits in memory (``EASE_MAX_APPS``).
- **ALS / BPR**: the ``implicit`` library's models on the same matrix (confidence ``alpha * x``
  for ALS), neighbours by cosine of item factors, as the library's ``similar_items`` does.
  ``implicit`` is a dev/bench dependency only, imported when these run.
- **oracle** (simulated data only): cosine of the simulator's ground-truth latent positions.
- **engagement oracle** (simulated data only): the simulator's own expected co-engagement, the
  exposure of app j to a user like q (targeted at q's cluster, by popularity) times the chance
  that such a user clicks j. It reads the hidden truth, so it is not a method but a reference
  for the ceiling a co-engagement model can reach on that data (approximate: the user's taste is
  taken to be q's position).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd
from scipy import sparse

from evaluation.compare import popularity_rankings
from evaluation.metrics import PADDING
from evaluation.topk import query_top_k
from models.embedding import interaction_matrix, truncated_svd
from models.features import MetadataEncoder, l2_normalize, tokenize_table
from models.index import EXACT_MAX_APPS, build_index

SEARCH_BATCH = 4096
KNN_BATCH = 1024
EASE_MAX_APPS = 12_000  # a dense float64 app x app inverse: 1.2 GB at this size
ORACLE_CELLS = 8_000_000  # query x app scores held at once by the engagement oracle
DEFAULT_CONVERSION_WEIGHT = 3.0


class BaselineError(ValueError):
    """A baseline that cannot be computed from what it was given."""


@dataclass(frozen=True)
class Ranking:
    """Top-k lists for queries: ``rankings[i]`` are positions into ``app_ids`` (best first, -1 = padding)."""

    name: str
    rankings: np.ndarray
    app_ids: list[str]
    note: str = ""  # how the ranking was computed where a reader should know (e.g. an approximate search)


def _distinct(query_app_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct query apps (sorted) and, per query, the position of its app among them: many users share query apps."""
    distinct, inverse = np.unique(np.asarray(query_app_ids, dtype=object).astype(str), return_inverse=True)
    return distinct.tolist(), inverse


def embedding_rankings(name: str, app_ids: Sequence[str], embeddings: np.ndarray, query_app_ids: Sequence[str],
                       k: int, item_vectors: np.ndarray | None = None) -> Ranking:
    """Exact top-k neighbours (query excluded) of each query app; unknown query apps get padding.

    Queries are rows of ``embeddings``, searched by inner product among ``item_vectors`` (default:
    the embeddings, i.e. cosine). Rows are L2-normalised here (all-zero rows, e.g. apps a model
    never saw, score 0 against everything).
    """
    app_ids = [str(a) for a in app_ids]
    vectors = _unit_float32(embeddings)
    indexed = vectors if item_vectors is None else _unit_float32(item_vectors)
    if vectors.shape[0] != len(app_ids) or indexed.shape != vectors.shape:
        raise BaselineError(f"{vectors.shape} embeddings and {indexed.shape} item vectors for {len(app_ids)} app ids")
    index = faiss.IndexFlatIP(indexed.shape[1])
    index.add(indexed)
    return index_rankings(name, app_ids, vectors, index, query_app_ids, k)


def _unit_float32(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(l2_normalize(np.asarray(vectors, dtype=np.float64)), dtype=np.float32)


def index_rankings(name: str, app_ids: list[str], vectors: np.ndarray, index: faiss.Index, query_app_ids: Sequence[str],
                   k: int, note: str = "") -> Ranking:
    """Top-k (query excluded) of each query app's row of ``vectors`` searched in ``index`` (row i = app i)."""
    distinct, inverse = _distinct(query_app_ids)
    position = pd.Index(app_ids)
    rows = position.get_indexer(distinct)
    found = np.full((len(distinct), k), PADDING, dtype=np.int64)
    known = np.flatnonzero(rows >= 0)
    for start in range(0, known.size, SEARCH_BATCH):
        batch = known[start : start + SEARCH_BATCH]
        own = rows[batch]
        _, neighbours = index.search(vectors[own], min(k + 1, len(app_ids)))
        dropped = (neighbours == own[:, None]) | (neighbours < 0)
        order = np.argsort(dropped, axis=1, kind="stable")[:, :k]
        kept = np.where(np.take_along_axis(dropped, order, axis=1), PADDING, np.take_along_axis(neighbours, order, axis=1))
        found[batch, : kept.shape[1]] = kept
    return Ranking(name, found[inverse], app_ids, note)


def popularity(train_interactions: pd.DataFrame, query_app_ids: Sequence[str], k: int) -> Ranking:
    rankings, app_ids = popularity_rankings(train_interactions, query_app_ids, k)
    return Ranking("popularity", rankings, app_ids)


def content_embeddings(catalog: pd.DataFrame, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Metadata-only app vectors: LSA of the encoder's IDF-weighted token blocks (catalog order)."""
    if "app_id" not in catalog.columns:
        raise BaselineError("the catalog has no app_id column")
    tokens = tokenize_table(catalog)
    features = MetadataEncoder.fit_vocabulary(tokens).features(tokens)[:, 1:]  # column 0 is the bias
    values, vectors = truncated_svd(sparse.csr_matrix(features, dtype=np.float32), dim, seed)
    embeddings = np.zeros((features.shape[0], dim))
    embeddings[:, : len(values)] = features @ vectors
    return catalog["app_id"].astype(str).tolist(), l2_normalize(embeddings)


def content_only(catalog: pd.DataFrame, query_app_ids: Sequence[str], k: int, *, dim: int, seed: int,
                 exact_max_apps: int = EXACT_MAX_APPS) -> Ranking:
    """Metadata-only neighbours, searched like a model's: exactly up to ``exact_max_apps`` catalog apps, above it
    with the IVF index of models/index.py (its recall against exact search measured and stated in the ranking's
    note). An exact search of 30K query apps over 200K costs ~25 CPU-seconds of matrix products alone."""
    app_ids, embeddings = content_embeddings(catalog, dim, seed)
    vectors = _unit_float32(embeddings)
    index, info = build_index(vectors, "auto", exact_max_apps, seed)
    note = "" if info["type"] == "flat" else (
        f"content-only: {len(app_ids):,} catalog apps (more than {exact_max_apps:,}), so searched with an "
        f"{info['type'].upper()} index ({', '.join(f'{key} {value}' for key, value in info['params'].items())}) like a "
        f"model's: recall@10 against exact search {info['recall_at_10_vs_exact']:.3f} on {info['recall_queries']:,} "
        "catalog apps")
    return index_rankings("content-only", app_ids, vectors, index, query_app_ids, k, note)


def _train_matrix(train_interactions: pd.DataFrame, conversion_weight: float) -> tuple[list[str], sparse.csr_matrix]:
    """The trainer's user x app engagement matrix over the apps that have any train positive."""
    positive = (train_interactions["clicks"] > 0) | (train_interactions["conversions"] > 0)
    app_ids = sorted(train_interactions.loc[positive, "app_id"].astype(str).unique().tolist())
    if not app_ids:
        raise BaselineError("the train interactions hold no positive (click or conversion) to learn from")
    return app_ids, interaction_matrix(train_interactions, app_ids, conversion_weight).matrix


def _sparse_row_top_k(columns: np.ndarray, values: np.ndarray, k: int, exclude: int) -> np.ndarray:
    """The k best positive entries of one sparse row (best first, ties by column), ``exclude`` left out."""
    keep = (values > 0) & (columns != exclude)
    columns, values = columns[keep], values[keep]
    if columns.size > k:  # everything tied with the k-th value stays in, so the tie order below is exact
        threshold = np.partition(values, columns.size - k)[columns.size - k]
        columns, values = columns[values >= threshold], values[values >= threshold]
    best = columns[np.lexsort((columns, -values))][:k]
    return np.concatenate([best, np.full(k - best.size, PADDING, dtype=np.int64)])


def _query_rows_top_k(name: str, app_ids: list[str], query_app_ids: Sequence[str], k: int,
                      similarity_rows: Callable[[np.ndarray], sparse.csr_matrix | np.ndarray]) -> Ranking:
    """Top-k per query app from item-item scores computed a block of query apps at a time.

    ``similarity_rows(rows)`` gives the scores of those apps' rows (sparse or dense); only positive
    scores are ranked, the query itself never is, and an unknown query app gets padding.
    """
    distinct, inverse = _distinct(query_app_ids)
    rows = pd.Index(app_ids).get_indexer(distinct)
    found = np.full((len(distinct), k), PADDING, dtype=np.int64)
    known = np.flatnonzero(rows >= 0)
    for start in range(0, known.size, KNN_BATCH):
        batch = known[start : start + KNN_BATCH]
        similarity = sparse.csr_matrix(similarity_rows(rows[batch]))
        for offset, query in enumerate(batch):
            entries = slice(similarity.indptr[offset], similarity.indptr[offset + 1])
            found[query] = _sparse_row_top_k(similarity.indices[entries].astype(np.int64), similarity.data[entries], k,
                                             rows[query])
    return Ranking(name, found[inverse], app_ids)


def item_knn(train_interactions: pd.DataFrame, query_app_ids: Sequence[str], k: int,
             conversion_weight: float = DEFAULT_CONVERSION_WEIGHT) -> Ranking:
    """Top-k apps by cosine of engagement columns; only apps sharing a user with the query can be ranked.

    Similarities are sparse products of the query apps' columns with the matrix, a block of
    queries at a time: the cost follows the co-engagement actually present, never apps x apps.
    """
    app_ids, matrix = _train_matrix(train_interactions, conversion_weight)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel())
    normalized = (matrix @ sparse.diags(1.0 / np.where(norms > 0, norms, 1.0))).astype(np.float32).tocsr()
    by_app = normalized.T.tocsr()  # apps x users
    return _query_rows_top_k("item-kNN", app_ids, query_app_ids, k, lambda rows: by_app[rows] @ normalized)


def rp3beta(train_interactions: pd.DataFrame, query_app_ids: Sequence[str], k: int, *, alpha: float = 1.0,
            beta: float = 0.5, conversion_weight: float = DEFAULT_CONVERSION_WEIGHT) -> Ranking:
    """RP3beta (Paudel et al., ACM TiiS 2016): a three-step random walk app -> user -> app, re-ranked by popularity.

        W[i, j] = sum_u P(u | i)^alpha P(j | u)^alpha / deg(j)^beta

    with P(u | i) and P(j | u) the bipartite graph's transition probabilities (engagement strength
    normalised over the app's users and over the user's apps) and deg(j) the app's number of users.
    Exact and sparse, a block of query apps at a time, like item-kNN.
    """
    app_ids, matrix = _train_matrix(train_interactions, conversion_weight)
    matrix = matrix.astype(np.float64)

    def transition(rows: sparse.csr_matrix) -> sparse.csr_matrix:
        sums = np.asarray(rows.sum(axis=1)).ravel()
        walked = (sparse.diags(1.0 / np.where(sums > 0, sums, 1.0)) @ rows).tocsr()
        return walked.power(alpha) if alpha != 1.0 else walked

    app_to_user = transition(matrix.T.tocsr())            # apps x users
    degrees = np.bincount(matrix.indices, minlength=len(app_ids)).astype(np.float64)
    user_to_app = (transition(matrix) @ sparse.diags(np.where(degrees > 0, degrees, 1.0) ** -beta)).tocsr()
    return _query_rows_top_k("RP3beta", app_ids, query_app_ids, k, lambda rows: app_to_user[rows] @ user_to_app)


def ease(train_interactions: pd.DataFrame, query_app_ids: Sequence[str], k: int, *, l2: float = 100.0,
         conversion_weight: float = DEFAULT_CONVERSION_WEIGHT, max_apps: int = EASE_MAX_APPS) -> Ranking:
    """EASE (Steck, WWW 2019): the closed-form item-item ridge regression with a zero diagonal.

        P = (X^T X + l2 I)^-1,  B[i, j] = -P[i, j] / P[j, j] (i != j),  score(q -> j) = B[q, j]

    on the binary user x app matrix (one dense app x app inverse: only where that fits in memory,
    ``max_apps``; beyond it the baseline refuses rather than swap).
    """
    app_ids, matrix = _train_matrix(train_interactions, conversion_weight)
    if len(app_ids) > max_apps:
        raise BaselineError(f"EASE needs a dense {len(app_ids):,} x {len(app_ids):,} matrix; it runs up to {max_apps:,} "
                            "engaged apps (pass max_apps to raise the limit where memory allows)")
    binary = (matrix > 0).astype(np.float64)
    gram = (binary.T @ binary).toarray()
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = inverse / -np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return _query_rows_top_k("EASE", app_ids, query_app_ids, k, lambda rows: weights[rows])


def implicit_embeddings(train_interactions: pd.DataFrame, method: str, *, dim: int, seed: int,
                        conversion_weight: float = DEFAULT_CONVERSION_WEIGHT, alpha: float = 10.0,
                        regularization: float = 0.05, iterations: int | None = None) -> tuple[list[str], np.ndarray]:
    """Item factors of ``implicit``'s ALS (``method="als"``) or BPR (``"bpr"``) on the engagement matrix."""
    from threadpoolctl import threadpool_limits  # implicit's advice: one BLAS thread, its own threads do the work

    app_ids, matrix = _train_matrix(train_interactions, conversion_weight)
    with threadpool_limits(1, "blas"):
        if method == "als":
            from implicit.cpu.als import AlternatingLeastSquares

            model = AlternatingLeastSquares(factors=dim, regularization=regularization, alpha=alpha,
                                            iterations=iterations or 15, random_state=seed)
        elif method == "bpr":
            from implicit.cpu.bpr import BayesianPersonalizedRanking

            model = BayesianPersonalizedRanking(factors=dim, learning_rate=0.05, regularization=0.01,
                                                iterations=iterations or 100, random_state=seed)
        else:
            raise BaselineError(f"implicit method '{method}' is not one of als, bpr")
        model.fit(matrix, show_progress=False)
    return app_ids, np.asarray(model.item_factors, dtype=np.float64)


def oracle(app_ids: Sequence[str], latent_positions: np.ndarray, query_app_ids: Sequence[str], k: int) -> Ranking:
    """Ground-truth neighbours: cosine of the simulator's latent app positions (``ground_truth/apps.parquet``)."""
    return embedding_rankings("oracle", app_ids, latent_positions, query_app_ids, k)


def engagement_oracle(app_ids: Sequence[str], latent_positions: np.ndarray, cluster: np.ndarray, popularity: np.ndarray,
                      query_app_ids: Sequence[str], k: int, *, targeted_fraction: float, click_bias: float,
                      click_slope: float) -> Ranking:
    """The simulator's expected co-engagement with query app q, the user's taste taken to be q's position:

        score(q, j) = exposure(j | q) * sigmoid(click_bias + click_slope * cos(q, j)),
        exposure(j | q) = (1 - targeted_fraction) * pop(j) + targeted_fraction * [c(j) = c(q)] * pop(j) / pop(c(q))

    (an ad is targeted at the user's cluster and picks an app there by popularity, or else picks
    one by popularity overall). Exact, in blocks of queries: O(queries x apps) time.
    """
    app_ids = [str(a) for a in app_ids]
    positions = np.asarray(l2_normalize(np.asarray(latent_positions, dtype=np.float64)), dtype=np.float32)
    cluster = np.asarray(cluster, dtype=np.int64)
    popularity = np.asarray(popularity, dtype=np.float64)
    if not len(positions) == len(cluster) == len(popularity) == len(app_ids):
        raise BaselineError(f"{len(app_ids)} app ids but {len(positions)} positions, {len(cluster)} clusters, "
                            f"{len(popularity)} popularities")
    cluster_mass = np.bincount(cluster, weights=popularity)

    def scores(own: np.ndarray) -> np.ndarray:
        affinity = positions[own] @ positions.T
        click = 1.0 / (1.0 + np.exp(-(click_bias + click_slope * affinity)))
        same = cluster[own][:, None] == cluster[None, :]
        return popularity * ((1.0 - targeted_fraction) + targeted_fraction * same / cluster_mass[cluster[own]][:, None]) * click

    return score_rows_rankings("engagement oracle", app_ids, query_app_ids, k, scores)


def score_rows_rankings(name: str, app_ids: Sequence[str], query_app_ids: Sequence[str], k: int,
                        score_rows: Callable[[np.ndarray], np.ndarray]) -> Ranking:
    """Exact top-k from dense scores: ``score_rows(rows)`` is (len(rows), apps) for those query apps' rows.

    In blocks of ``ORACLE_CELLS`` query x app scores, O(queries x apps) time; the query itself is never listed.
    """
    app_ids = [str(a) for a in app_ids]
    return Ranking(name, query_top_k(app_ids, query_app_ids, k, lambda rows: [np.array(score_rows(rows), dtype=np.float64)],
                                     block_cells=ORACLE_CELLS)[0], app_ids)
