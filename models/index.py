"""The FAISS index over L2-normalised embeddings (inner product = cosine), chosen by size and checked.

DESIGN.md's measurements on the target machine: exact ``IndexFlatIP`` is fast enough up to
~100K apps; above that, IVF (nlist ~ 4 sqrt(N), nprobe 16) reaches recall@10 ~0.99 with a build
of seconds, while HNSW (M=32, efSearch 64) is as accurate and quicker to query but takes minutes
to build. ``auto`` therefore uses the exact index up to ``exact_max_apps`` and IVF above it.

An approximate index is only as good as its measured recall, so ``build_index`` measures
recall@10 against exact search on a seeded sample of the apps themselves (the query app
excluded, as the predictor does) and widens the search (nprobe / efSearch) until the target is
met or the search is exhaustive. The result is recorded in the artifact's manifest.
"""

from __future__ import annotations

import math
import time
from typing import Any

import faiss
import numpy as np

from models.progress import Progress

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
EXACT_MAX_APPS = 100_000  # "auto": exact search up to this many apps (the pipeline's exact_index_max_apps default)
RECALL_K = 10
RECALL_TARGET = 0.95
RECALL_QUERIES = 1000
EXACT_QUERY_BLOCK = 128  # queries a product (x 200K apps: 100 MB of float32 scores)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
HNSW_MAX_EF_SEARCH = 1024
IVF_NPROBE = 16
IVF_MIN_POINTS_PER_LIST = 39  # FAISS's k-means warns (and clusters badly) below this
# The coarse quantizer's k-means: FAISS's defaults (25 iterations, up to 256 points a list) took 35 CPU-s at 200K
# apps (1,789 lists), as much as the whole evaluation; 10 iterations on at most 64 points a list took 9.7 and gave
# the same recall@10 against exact search (1.000 at nprobe 16 on the 200K world's embeddings). The recall check
# below widens nprobe if a coarser clustering ever costs recall.
IVF_KMEANS_ITERATIONS = 10
IVF_TRAIN_POINTS_PER_LIST = 64


class IndexConfigError(ValueError):
    """An index type or input that cannot be built."""


def ivf_list_count(n_vectors: int) -> int:
    """nlist ~ 4 sqrt(N), but never so many lists that k-means has too few points per list."""
    return max(1, min(round(4 * math.sqrt(n_vectors)), n_vectors // IVF_MIN_POINTS_PER_LIST))


def choose_index_type(n_vectors: int, index_type: str, exact_max_apps: int) -> str:
    if index_type not in INDEX_TYPES:
        raise IndexConfigError(f"index_type '{index_type}' is not one of {', '.join(INDEX_TYPES)}")
    if index_type != "auto":
        return index_type
    return "flat" if n_vectors <= exact_max_apps else "ivf"


def largest(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (2-D, at least ``k`` columns), the columns and values of its ``k`` largest scores, best
    first (ties: the lower column).

    A row's k-th largest of its maxima over column chunks bounds its k-th largest score from below (those maxima are k
    different cells), so only the chunks reaching that bound are read again and only their cells at or above it
    sorted: a sixth of ``np.argpartition``'s time over 200K columns. The chunks are views of one reshape (the columns
    past the last whole chunk are one more, shorter chunk): gathering them as blocks, not as cell indices, took the
    call from 29 to 12 ms at 80 x 200K scores.
    """
    rows_count, columns = scores.shape
    width = max(1, columns // (32 * k))
    whole = columns // width
    chunks = scores[:, : whole * width].reshape(rows_count, whole, width)
    chunk_maxima = chunks.max(axis=2)
    if whole * width < columns:
        chunk_maxima = np.hstack([chunk_maxima, scores[:, whole * width:].max(axis=1, keepdims=True)])
    count = chunk_maxima.shape[1]
    bound = np.partition(chunk_maxima, count - k, axis=1)[:, count - k]
    pair_rows, pair_chunks = np.nonzero(chunk_maxima >= bound[:, None])
    in_whole = pair_chunks < whole
    found_rows, found_cols, found_values = [], [], []
    for pair_rows_part, blocks, offsets in (
            (pair_rows[in_whole], chunks[pair_rows[in_whole], pair_chunks[in_whole]], pair_chunks[in_whole] * width),
            (pair_rows[~in_whole], scores[pair_rows[~in_whole], whole * width:], np.full((~in_whole).sum(), whole * width))):
        reaching, within = np.nonzero(blocks >= bound[pair_rows_part, None])
        found_rows.append(pair_rows_part[reaching])
        found_cols.append(offsets[reaching] + within)
        found_values.append(blocks[reaching, within])
    rows, cols, values = (np.concatenate(parts) for parts in (found_rows, found_cols, found_values))
    order = np.lexsort((cols, -values, rows))
    first = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=rows_count))[:-1]])
    chosen = order[first[:, None] + np.arange(k)]
    return cols[chosen], values[chosen]


def exact_neighbors(embeddings: np.ndarray, query_rows: np.ndarray, k: int,
                    item_vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-(k + 1) (scores, ids), best first (ties: the lower id), of ``embeddings[query_rows]`` among
    ``item_vectors`` (default: the embeddings).

    Matrix products a block of queries at a time, not ``IndexFlatIP.search``: for the 1,000 queries of the recall
    check FAISS 1.15 does not use BLAS, and took 7.1-8.2 CPU-s over 200K x 64 vectors against 3.4 here (measured
    while other jobs loaded the machine); ``largest`` then ranks each block (argpartition took 2.1 of those 3.4).
    """
    indexed = embeddings if item_vectors is None else item_vectors
    queries = embeddings[query_rows]
    kk = min(k + 1, len(indexed))
    scores = np.empty((len(queries), kk), dtype=np.float32)
    ids = np.empty((len(queries), kk), dtype=np.int64)
    for start in range(0, len(queries), EXACT_QUERY_BLOCK):
        block = queries[start:start + EXACT_QUERY_BLOCK] @ indexed.T
        ids[start:start + len(block)], scores[start:start + len(block)] = largest(block, kk)
    return scores, ids


def recall_vs_exact(index: faiss.Index, embeddings: np.ndarray, query_rows: np.ndarray,
                    exact: tuple[np.ndarray, np.ndarray], k: int = RECALL_K) -> float:
    """Mean share of the exact top-k (query excluded) that the index returns.

    A returned neighbour counts when its score reaches the exact k-th score: apps with identical
    embeddings (e.g. cold apps with the same metadata) tie, and any of them is a right answer.
    """
    exact_scores, exact_ids = exact
    scores, ids = index.search(embeddings[query_rows], k + 1)
    hits = 0
    for row, query in enumerate(query_rows):
        keep_exact = exact_ids[row] != query
        kth_score = exact_scores[row][keep_exact][:k][-1]
        keep = (ids[row] != query) & (ids[row] >= 0)
        hits += min(k, int((scores[row][keep][:k] >= kth_score - 1e-5).sum()))
    return hits / (k * len(query_rows))


def build_index(embeddings: np.ndarray, index_type: str = "auto", exact_max_apps: int = EXACT_MAX_APPS, seed: int = 42,
                recall_queries: int = RECALL_QUERIES, progress: Progress | None = None,
                item_vectors: np.ndarray | None = None) -> tuple[faiss.Index, dict[str, Any]]:
    """A FAISS inner-product index and a record of what was built and how well it does.

    The index holds ``item_vectors`` (row i = app i) when given, else the embeddings themselves; the
    embeddings are the queries (an asymmetric model, models/embedding.py, searches with one and
    indexes the other). Recall is measured with the embeddings as queries either way.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    indexed = embeddings if item_vectors is None else np.ascontiguousarray(item_vectors, dtype=np.float32)
    if indexed.shape != embeddings.shape:
        raise IndexConfigError(f"item vectors {indexed.shape} and embeddings {embeddings.shape} must have the same shape")
    n_vectors, dim = embeddings.shape
    if n_vectors < 2:
        raise IndexConfigError(f"an index needs at least 2 apps to find neighbours, got {n_vectors}")
    chosen = choose_index_type(n_vectors, index_type, exact_max_apps)
    step = (progress or Progress.quiet()).child(f"index build ({chosen})")
    started = time.perf_counter()
    params: dict[str, Any]
    if chosen == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
        index.add(indexed)
        params = {}
    elif chosen == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(indexed)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    else:
        nlist = ivf_list_count(n_vectors)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = IVF_KMEANS_ITERATIONS
        index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
        index.train(indexed)
        index.add(indexed)
        index.nprobe = min(IVF_NPROBE, nlist)
        params = {"nlist": nlist}
    build_seconds = time.perf_counter() - started

    if chosen == "flat":
        recall, sample_size = 1.0, 0  # exact search is the reference itself
    else:
        rng = np.random.default_rng(seed)
        query_rows = np.sort(rng.choice(n_vectors, size=min(recall_queries, n_vectors), replace=False))
        exact = exact_neighbors(embeddings, query_rows, min(RECALL_K, n_vectors - 1), indexed)
        recall = recall_vs_exact(index, embeddings, query_rows, exact, min(RECALL_K, n_vectors - 1))
        # Widen the search until the target recall is met or the search is exhaustive.
        while recall < RECALL_TARGET:
            if chosen == "ivf" and index.nprobe < index.nlist:
                index.nprobe = min(index.nprobe * 2, index.nlist)
            elif chosen == "hnsw" and index.hnsw.efSearch < HNSW_MAX_EF_SEARCH:
                index.hnsw.efSearch *= 2
            else:
                break
            recall = recall_vs_exact(index, embeddings, query_rows, exact, min(RECALL_K, n_vectors - 1))
        sample_size = len(query_rows)
        params.update({"nprobe": index.nprobe} if chosen == "ivf" else {"efSearch": index.hnsw.efSearch})

    info = {
        "type": chosen,
        "requested": index_type,
        "params": params,
        "recall_at_10_vs_exact": round(float(recall), 4),
        "recall_queries": sample_size,
        "recall_target": RECALL_TARGET,
        "build_seconds": round(build_seconds, 3),
    }
    step.finish(f"{n_vectors:,} vectors, exact search" if chosen == "flat"
                else f"{n_vectors:,} vectors, recall@10 vs exact {recall:.3f} on {sample_size:,} queries")
    return index, info


class ListScan:
    """Many queries against an inner-product ``IndexIVFFlat``, list by list: the same candidates and
    scores as ``index.search`` (each query scans its ``nprobe`` nearest lists), for bulk export.

    FAISS scans query by query, one 64-d dot product at a time (~5K queries per core-second at 1M
    apps, nlist 4000, nprobe 16). Here every list is scored against all the queries that probe it
    with one matrix product (BLAS), and only candidates that can still be in a query's top ``kk``
    are kept: the ``kk``-th best score in the query's nearest list is a lower bound of its final
    ``kk``-th best, so everything below it is dropped before any sorting. Scores equal FAISS's to
    float rounding (~1e-7); near-exact ties may come out in another order.

    One call runs on the calling thread and holds the GIL only between numpy/BLAS/FAISS calls, so
    callers run several calls on threads for more cores (with one BLAS thread each: the products are
    small, and BLAS's own threads would compete with the callers').
    """

    def __init__(self, ivf: faiss.IndexIVFFlat):
        lists = ivf.invlists
        sizes = np.array([lists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
        self.offsets = np.zeros(ivf.nlist + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        # One contiguous copy of every list (vectors and ids), list after list.
        self.vectors = np.empty((int(self.offsets[-1]), ivf.d), dtype=np.float32)
        self.ids = np.empty(int(self.offsets[-1]), dtype=np.int64)
        for number in np.flatnonzero(sizes):
            start, end = self.offsets[number], self.offsets[number + 1]
            faiss.memcpy(faiss.swig_ptr(self.vectors[start:end]), lists.get_codes(int(number)), self.vectors[start:end].nbytes)
            faiss.memcpy(faiss.swig_ptr(self.ids[start:end]), lists.get_ids(int(number)), self.ids[start:end].nbytes)
        self.quantizer = ivf.quantizer
        self.nprobe = ivf.nprobe

    @staticmethod
    def supports(index: faiss.Index) -> bool:
        return isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT

    def probes(self, queries: np.ndarray) -> np.ndarray:
        """Each query's ``nprobe`` nearest lists, nearest first (n, nprobe): the coarse quantizer's answer."""
        return self.quantizer.search(queries, self.nprobe)[1]

    def search(self, queries: np.ndarray, probes: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, kk), best first, padded with -inf / -1: ``index.search(queries, kk)``
        given each query's probed lists ``probes`` (n, nprobe; -1 = none), as ``probes()`` gives them."""
        n = len(queries)
        threshold = np.full(n, -np.inf, dtype=np.float32)
        found = self._scan(queries, probes[:, :1], kk, threshold, sets_threshold=True)
        found += self._scan(queries, probes[:, 1:], kk, threshold, sets_threshold=False)
        query, ids, scores = (np.concatenate(parts) for parts in zip(*found)) if found else \
            (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
        # By query, then best score first, as one int64 key (a fraction of lexsort's cost): the query in
        # the high 32 bits, the score's order-preserving integer image, reversed, in the low 32. Stable,
        # so exact ties keep the scan's (deterministic) order.
        bits = scores.view(np.int32).astype(np.int64)
        ordered = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # float order as signed integers
        order = np.argsort((query << 32) | (0x7FFFFFFF - ordered), kind="stable")
        query, ids, scores = query[order], ids[order], scores[order]
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(query, minlength=n), out=starts[1:])
        rank = np.arange(len(query)) - starts[query]
        kept = rank < kk
        found_ids = np.full((n, kk), -1, dtype=np.int64)
        found_scores = np.full((n, kk), -np.inf, dtype=np.float32)
        found_ids[query[kept], rank[kept]] = ids[kept]
        found_scores[query[kept], rank[kept]] = scores[kept]
        return found_scores, found_ids

    def _scan(self, queries: np.ndarray, probes: np.ndarray, kk: int, threshold: np.ndarray,
              sets_threshold: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Score each (query, probed list) pair, grouped by list; the candidates at or above each query's
        threshold, as (query, id, score). With ``sets_threshold`` (each query's nearest list only) the
        threshold is first raised to the query's ``kk``-th best score in that list."""
        pair_query = np.repeat(np.arange(len(queries)), probes.shape[1])
        pair_list = probes.ravel()
        keep = pair_list >= 0
        # A stable sort of 16-bit keys is a radix sort (several times quicker than on int64)
        order = np.argsort(pair_list[keep].astype(np.int16 if len(self.offsets) <= 2 ** 15 else np.int32), kind="stable")
        pair_query, pair_list = pair_query[keep][order], pair_list[keep][order]
        if not len(pair_list):
            return []
        bounds = np.flatnonzero(np.diff(pair_list)) + 1
        found = []
        for start, end in zip(np.concatenate(([0], bounds)).tolist(), np.concatenate((bounds, [len(pair_list)])).tolist()):
            number, rows = pair_list[start], pair_query[start:end]
            first, last = self.offsets[number], self.offsets[number + 1]
            scores = queries[rows] @ self.vectors[first:last].T
            size = last - first
            if sets_threshold and size >= kk:
                threshold[rows] = np.partition(scores, size - kk, axis=1)[:, size - kk]
            hits = np.flatnonzero(scores >= threshold[rows, None])
            row, column = np.divmod(hits, size)
            found.append((rows[row], self.ids[first + column], scores.ravel()[hits]))
        return found
