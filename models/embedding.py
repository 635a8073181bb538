"""The embedding trainer: app vectors from co-engagement, completed by metadata.

Two apps are similar when the same users click and convert on both. The trainer

1. builds the sparse user x app matrix X of engagement strength
   (``log1p(clicks + conversion_weight * conversions)``; the log damps a user's repeated clicks), raised
   to ``engagement_exponent`` for the factorisation (1 by default; 0 counts every engaged pair once, like
   RP3beta's alpha flattening its walk: where repeat clicks say more about habit than about similarity);
2. normalises it, A = (D_user + tau_u)^-a X (D_app + tau_a)^-b (a = b = 1/2 by default), so that
   very active users and very popular apps do not dominate the factorisation (A^T A is the
   degree-normalised co-engagement graph, never built: at 200K apps an app x app matrix is the
   memory trap measured in DESIGN.md). tau is a quarter of the mean degree (regularised spectral
   embedding, Qin & Rohe 2013): without it the leading singular vectors of a sparse log are tiny
   near-disconnected pieces (two apps sharing one user), and the more exactly the SVD converges,
   the worse the embedding gets; with it, +11% validation recall@10 at 50K apps;
3. takes a truncated SVD of A (rank ``embedding_dim - 1``) by seeded randomised subspace iteration
   (Halko et al.), giving app factors F = V * S^p whose inner products approximate A^T A, each
   scaled by the app's engagement degree to the power ``popularity_exponent`` (with
   ``popularity_recency`` r > 0, the degree counts each user's engagement decayed by
   exp(-age / (r x span)), age since the pair's first engagement: what is popular now; new releases
   dominate a real catalog's engagement, +2.4% holdout recall@10 on MovieLens 100K);
4. fits the metadata encoder (models/features.py) by ridge regression from metadata to those
   factors on warm apps, each weighted by its shrinkage weight w = n / (n + c) where n is the
   number of users who engaged with it, and blends: f = w * F + (1 - w) * metadata, so apps with
   little evidence lean on their metadata and a cold app (no interactions) is its metadata alone;
5. turns the factors into two sets of unit vectors of ``embedding_dim`` coordinates, the
   asymmetric reduction of inner-product search to cosine search (Bachrach et al., RecSys 2014):

   - ``embeddings`` (the query side, what the artifact stores and serving searches with):
     ``[f / |f|, 0]``;
   - ``item_vectors`` (what the FAISS index holds): ``[f / M, sqrt(1 - |f|^2 / M^2)]`` with M the
     largest |f|.

   A query's score for an app is then f_query . f_app / (|f_query| M): the ranking of the inner
   product f . f, not of the cosine. That matters: the cosine divides by |f_app|, and for an app
   whose co-engagement the low-rank factors explain poorly (few users, noisy) that division
   inflates a small, noisy vector into a confident neighbour; measured on the simulator it cost a
   third of holdout recall@10 (bench/quality.py). Both sides are L2-normalised float32 and the
   index is an ordinary inner-product index, so serving and the artifact format do not change;
   a metadata embedding (cold start) is a query like any other.

Memory is O(nnz + (users + apps) * dim) and time is a handful of sparse products. Everything is
seeded and order-independent (users and apps are sorted), so the same inputs give the same bytes.
The defaults were chosen on a validation split inside the train window (``bench/quality.py
--tune``), never on the evaluation holdout.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import linalg, sparse
from threadpoolctl import threadpool_limits

from models.features import EncoderSettings, MetadataEncoder, l2_normalize, tokenize_table
from models.progress import Progress

TRAINER_NAME = "normalized-cooccurrence-svd+metadata-ridge+asymmetric-mips"


class TrainingDataError(ValueError):
    """Training input that cannot produce a model (no usable interactions, duplicate app ids...)."""


@dataclass(frozen=True)
class EmbeddingParams:
    embedding_dim: int = 64
    seed: int = 42
    conversion_weight: float = 3.0   # a conversion counts this many clicks
    shrinkage: float = 5.0           # c in n / (n + c): users needed before CF outweighs metadata
    singular_value_power: float = 1.0  # app factors V * S^p (1: inner products approximate A^T A)
    popularity_exponent: float = 0.0  # factors scaled by (engagement degree)^t: t > 0 favours popular neighbours
    popularity_recency: float = 0.0  # r > 0: that degree decays engagement by exp(-age / (r x the data's time span))
    oversampling: int = 10
    power_iterations: int = 4
    engagement_exponent: float = 1.0  # the factorised matrix holds strength^e (0: every engaged pair counts 1)
    user_degree_exponent: float = 0.5  # a in D_user^-a: how much a very active user's engagement is damped
    app_degree_exponent: float = 0.5   # b in D_app^-b: how much a popular app is damped in the factorisation
    degree_regularization: float = 0.25  # tau / mean degree added to every degree (regularised spectral embedding)
    factor_rank: int = 0             # SVD rank used (0: embedding_dim - 1); a smaller rank is zero-padded to the dim
    encoder: EncoderSettings = field(default_factory=EncoderSettings)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainedEmbeddings:
    app_ids: list[str]
    embeddings: np.ndarray           # float32 (apps, dim), L2-normalised rows: the query side
    item_vectors: np.ndarray         # float32 (apps, dim), L2-normalised rows: what the index holds
    encoder: MetadataEncoder
    engaged_users: np.ndarray        # per app: distinct users with a positive in the train window
    summary: dict


@dataclass(frozen=True)
class InteractionMatrix:
    matrix: sparse.csr_matrix        # users x apps, float32 engagement strength
    users: int
    used_rows: int
    dropped_unknown_apps: int


def _engagement_strength(interactions: pd.DataFrame, app_ids: list[str],
                         conversion_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the app's position in ``app_ids`` (-1: unknown), its engagement strength, and whether it is used."""
    # Each distinct id looked up once: half the CPU of looking up every row's (1.15 s at 1.5M rows, 200K apps)
    codes, distinct = pd.factorize(interactions["app_id"], use_na_sentinel=False)
    app_position = pd.Index(app_ids).get_indexer(pd.Index(distinct).astype(str))[codes]
    strength = np.log1p(
        interactions["clicks"].to_numpy(dtype=np.float64)
        + conversion_weight * interactions["conversions"].to_numpy(dtype=np.float64)
    )
    return app_position, strength, (app_position >= 0) & (strength > 0)


def interaction_matrix(interactions: pd.DataFrame, app_ids: list[str], conversion_weight: float) -> InteractionMatrix:
    """The user x app engagement matrix over the catalog's apps (rows for unknown apps are dropped).

    Users are sorted and duplicate (user, app) rows summed, so the matrix does not depend on row order.
    """
    app_position, strength, used = _engagement_strength(interactions, app_ids, conversion_weight)
    known = app_position >= 0
    user_codes, users = pd.factorize(interactions["user_id"].astype(str)[used], sort=True)
    matrix = sparse.csr_matrix(
        (strength[used].astype(np.float32), (user_codes, app_position[used])), shape=(len(users), len(app_ids))
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return InteractionMatrix(matrix, len(users), int(used.sum()), int((~known).sum()))


def popularity_degrees(interactions: pd.DataFrame, app_ids: list[str], matrix: sparse.csr_matrix,
                       params: EmbeddingParams) -> np.ndarray:
    """Per app, the engagement ``popularity_exponent`` weighs: the matrix's column sums, or with
    ``popularity_recency`` r > 0 each pair's strength times exp(-age / (r x span)), where age is the time from the
    pair's first engagement to the latest first engagement and span the time those cover (so the fit part of a
    validation split is weighed as of its own end, nothing from after it)."""
    if params.popularity_recency == 0:
        return np.asarray(matrix.sum(axis=0)).ravel()
    if "first_ts" not in interactions.columns:
        raise TrainingDataError("popularity_recency needs the interactions' first_ts column; re-run PrepareFeedback")
    app_position, strength, used = _engagement_strength(interactions, app_ids, params.conversion_weight)
    first = pd.to_datetime(interactions["first_ts"], utc=True)[used]
    age = (first.max() - first).dt.total_seconds().to_numpy(dtype=np.float64)
    span = max(float(age.max()), 1.0) if age.size else 1.0
    decay = np.exp(-age / (params.popularity_recency * span))
    return np.bincount(app_position[used], weights=strength[used] * decay, minlength=len(app_ids))


def normalize_degrees(matrix: sparse.csr_matrix, user_exponent: float = 0.5, app_exponent: float = 0.5,
                      regularization: float = 0.0) -> sparse.csr_matrix:
    """(D_user + tau_u)^-a X (D_app + tau_a)^-b, tau = ``regularization`` x the mean degree of that side
    (zero-degree rows and columns stay zero)."""
    def inverse_power(degrees: np.ndarray, exponent: float) -> np.ndarray:
        out = np.zeros_like(degrees, dtype=np.float64)
        smoothed = degrees + regularization * (degrees[degrees > 0].mean() if (degrees > 0).any() else 0.0)
        np.divide(1.0, smoothed ** exponent, out=out, where=degrees > 0)
        return out.astype(np.float32)

    user_scale = inverse_power(np.asarray(matrix.sum(axis=1)).ravel(), user_exponent)
    app_scale = inverse_power(np.asarray(matrix.sum(axis=0)).ravel(), app_exponent)
    return (sparse.diags(user_scale) @ matrix @ sparse.diags(app_scale)).tocsr()


@functools.lru_cache(maxsize=1)
def gaussian_start(seed: int, rows: int, columns: int, dtype: type) -> np.ndarray:
    """The seeded Gaussian block subspace iteration starts from (read-only). TrainEmbeddings factorises matrices of the
    same shape 4 times (selection's 3, then the fit) and drawing it took 0.9 CPU-s a time at 200K apps."""
    start = np.random.RandomState(seed).normal(size=(rows, columns)).astype(dtype)
    start.setflags(write=False)
    return start


def truncated_svd(matrix: sparse.csr_matrix, rank: int, seed: int, oversampling: int = 10,
                  power_iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Top ``rank`` singular values and right singular vectors (columns, float64) of a sparse matrix.

    Seeded randomised subspace iteration (Halko, Martinsson, Tropp), the algorithm of scikit-learn's
    ``randomized_svd`` (same Gaussian start from ``RandomState(seed)``, ``power_iterations`` passes, an orthonormal
    basis of the range, then the small SVD), arranged for a users x apps matrix at scale, where the dense work on
    the (users or apps) x (rank + oversampling) blocks, not the sparse products, is the cost: scikit-learn took
    ~17 CPU-s a factorisation at 200K apps, 40% of it ``scipy.linalg.svd`` of the wide (rank + oversampling) x apps
    projection. Here each pass is normalised once, on the apps side (an LU factor spans the same columns, so the
    subspace is the same; once a pass keeps float32 well conditioned at the spectral gaps of a normalised matrix),
    and the projection's SVD comes from its small Gram matrix in float64. Signs are fixed (each vector's largest
    entry positive), so vectors do not flip between runs. Directions with (numerically) no energy are dropped: a
    matrix of lower rank (e.g. fewer warm apps than the rank) gives fewer vectors.
    """
    rank = min(rank, *matrix.shape)
    if rank < 1:
        return np.zeros(0), np.zeros((matrix.shape[1], 0))
    dtype = np.float32 if matrix.dtype == np.float32 else np.float64
    basis = gaussian_start(seed, matrix.shape[1], rank + oversampling, dtype)
    by_app = matrix.T.tocsr()  # apps x users, so that both products read rows
    for _ in range(power_iterations):
        basis = linalg.lu(by_app @ (matrix @ basis), permute_l=True, check_finite=False)[0]
    users_basis = linalg.qr(matrix @ basis, mode="economic", check_finite=False)[0]
    projected = np.asarray(by_app @ users_basis, dtype=np.float64)  # (Q^T M)^T: apps x (rank + oversampling)
    energies, directions = np.linalg.eigh(projected.T @ projected)  # ascending
    values = np.sqrt(np.clip(energies[::-1][:rank], 0.0, None))
    keep = values > values[0] * 1e-6
    values = values[keep]
    right = projected @ directions[:, ::-1][:, :rank][:, keep] / values
    signs = np.sign(right[np.abs(right).argmax(axis=0), np.arange(right.shape[1])])
    return values, right * np.where(signs == 0, 1.0, signs)


def asymmetric_vectors(factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(queries, items), each (apps, dim + 1) with unit rows, such that query_i . item_j ranks j like factors_i . factors_j.

    queries = [f / |f|, 0]; items = [f / M, sqrt(1 - |f|^2 / M^2)] with M = max |f|. An all-zero
    factor row gives a zero query (it has nothing to search with) and the item [0, 1], which no
    query scores above 0.
    """
    norms = np.linalg.norm(factors, axis=1)
    largest = float(norms.max()) if norms.size and norms.max() > 0 else 1.0
    queries = np.hstack([l2_normalize(factors), np.zeros((len(factors), 1))])
    items = np.hstack([factors / largest, np.sqrt(np.clip(1.0 - (norms / largest) ** 2, 0.0, None))[:, None]])
    return queries, items


def spectral_factors(matrix: sparse.csr_matrix, params: EmbeddingParams) -> tuple[np.ndarray, np.ndarray]:
    """Singular values and right singular vectors (rank ``embedding_dim - 1``) of the degree-normalised matrix
    (its entries raised to ``engagement_exponent``)."""
    if params.engagement_exponent != 1.0:
        matrix = matrix.copy()
        matrix.data = matrix.data ** np.float32(params.engagement_exponent)
    normalized = normalize_degrees(matrix, params.user_degree_exponent, params.app_degree_exponent,
                                   params.degree_regularization)
    return truncated_svd(normalized, params.embedding_dim - 1, params.seed, params.oversampling, params.power_iterations)


def collaborative_factors(singular_values: np.ndarray, vectors: np.ndarray, degrees: np.ndarray,
                          params: EmbeddingParams) -> np.ndarray:
    """App factors (apps, embedding_dim - 1): V * S^p over the first ``factor_rank`` directions (the rest zero),
    scaled by degree^popularity_exponent, the largest row norm 1 (scale-free targets for the encoder's ridge)."""
    factor_dim = params.embedding_dim - 1
    rank = min(len(singular_values), params.factor_rank or factor_dim)
    cf = np.zeros((vectors.shape[0], factor_dim))
    cf[:, :rank] = vectors[:, :rank] * singular_values[:rank] ** params.singular_value_power
    cf *= popularity_weights(degrees, params.popularity_exponent)[:, None]
    return cf / max(float(np.linalg.norm(cf, axis=1).max()), 1e-12)


def popularity_weights(degrees: np.ndarray, exponent: float) -> np.ndarray:
    """Per app, the factor scale degree^exponent (an app without engagement: 1)."""
    return np.where(degrees > 0, degrees, 1.0) ** exponent


def single_threaded() -> threadpool_limits:
    """A context that runs BLAS and FAISS's OpenMP on one thread, for TrainEmbeddings and EvaluateCandidate.

    OpenBLAS's threaded products round differently from its single-threaded ones, so a model's bytes depended on the
    machine's core count (200K apps: other embeddings at 2 threads than at 1; same inputs and seed should give the
    same bytes on a laptop and on a SageMaker instance). And the products here are too thin for a second thread to
    pay: on the shared 2-core machine (load 2.3) TrainEmbeddings at 200K apps took 88.9 s wall and 90.7 CPU-s on one
    thread against 101.0 and 113.1 on two; a 200K x 73 Gram matrix 0.1 s against 2-6 s; FAISS's IVF build 12 CPU-s
    against 20 (the same index). The second core is for a second process, or a second task in the step.
    """
    return threadpool_limits(limits=1)


def train_embeddings(catalog: pd.DataFrame, interactions: pd.DataFrame, params: EmbeddingParams,
                     progress: Progress | None = None) -> TrainedEmbeddings:
    """Embeddings (query side) and index vectors for every catalog app (sorted by app id)."""
    if params.embedding_dim < 2:
        raise TrainingDataError(f"embedding_dim must be at least 2 (one coordinate carries the norm), got {params.embedding_dim}")
    if not 0 <= params.engagement_exponent <= 1:
        raise TrainingDataError(f"engagement_exponent must be between 0 (binary) and 1, got {params.engagement_exponent}")
    if params.popularity_recency < 0:
        raise TrainingDataError(f"popularity_recency must be 0 (no decay) or positive, got {params.popularity_recency}")
    if not 0 <= params.factor_rank < params.embedding_dim:
        raise TrainingDataError(f"factor_rank must be between 0 (all of embedding_dim - 1) and {params.embedding_dim - 1}, "
                                f"got {params.factor_rank}")
    progress = progress or Progress.quiet()
    catalog = catalog.assign(app_id=catalog["app_id"].astype(str)).sort_values("app_id", kind="stable")
    duplicated = catalog["app_id"][catalog["app_id"].duplicated()]
    if len(duplicated):
        raise TrainingDataError(
            f"the catalog lists {len(duplicated)} app id(s) more than once (e.g. {duplicated.iloc[0]}); "
            "fix the feature-store snapshot so every app_id is unique"
        )
    app_ids = catalog["app_id"].tolist()

    step = progress.child("interaction matrix")
    built = interaction_matrix(interactions, app_ids, params.conversion_weight)
    engaged_users = np.bincount(built.matrix.indices, minlength=len(app_ids))
    warm = engaged_users > 0
    if not warm.any():
        raise TrainingDataError(
            f"none of the {len(interactions):,} train interactions is a positive for a catalog app "
            f"({built.dropped_unknown_apps:,} rows are for apps missing from the catalog); check that prepare "
            "and train read the same catalog and that the window holds clicks or conversions"
        )
    step.finish(f"{built.users:,} users x {len(app_ids):,} apps, {built.matrix.nnz:,} positives, "
                f"{int(warm.sum()):,} warm apps")

    factor_dim = params.embedding_dim - 1
    step = progress.child("truncated SVD")
    singular_values, vectors = spectral_factors(built.matrix, params)
    degrees = popularity_degrees(interactions, app_ids, built.matrix, params)
    cf = collaborative_factors(singular_values, vectors, degrees, params)
    rank = min(len(singular_values), params.factor_rank or factor_dim)
    step.finish(f"rank {rank}, top singular values {', '.join(f'{s:.3f}' for s in singular_values[:3])}")

    step = progress.child("metadata encoder")
    tokens = tokenize_table(catalog)
    encoder = MetadataEncoder.fit_vocabulary(tokens, params.encoder)
    features = encoder.features(tokens)
    cf_weight = engaged_users / (engaged_users + params.shrinkage)
    # The encoder maps into the query space: its last coordinate (the norm carrier) is fitted to 0, so it stays 0.
    targets = np.hstack([cf, np.zeros((len(app_ids), 1))])
    encoder.fit(features[warm], targets[warm], cf_weight[warm])
    metadata = np.asarray(features @ encoder.weights)[:, :factor_dim]
    step.finish(f"vocabulary {len(encoder.vocabulary):,} tokens, fitted on {int(warm.sum()):,} warm apps")

    blended = cf_weight[:, None] * cf + (1.0 - cf_weight[:, None]) * metadata
    queries, items = asymmetric_vectors(blended)
    summary = {
        "trainer": TRAINER_NAME,
        "users": built.users,
        "positives": int(built.matrix.nnz),
        "interaction_rows_used": built.used_rows,
        "interaction_rows_unknown_app": built.dropped_unknown_apps,
        "warm_apps": int(warm.sum()),
        "cold_apps": int((~warm).sum()),
        "svd_rank": int(rank),
        "singular_values": [round(float(s), 6) for s in singular_values[: min(rank, 10)]],
        "encoder_vocabulary": len(encoder.vocabulary),
    }
    return TrainedEmbeddings(app_ids, queries.astype(np.float32), items.astype(np.float32), encoder, engaged_users, summary)
