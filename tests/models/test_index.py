"""FAISS index choice and the recall it records against exact search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from models.index import (
    IndexConfigError, ListScan, build_index, choose_index_type, exact_neighbors, ivf_list_count, largest,
    recall_vs_exact,
)


def clustered_vectors(n: int = 2000, dim: int = 16, clusters: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    vectors = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_auto_uses_exact_search_up_to_the_limit_and_ivf_above():
    assert choose_index_type(100_000, "auto", 100_000) == "flat"
    assert choose_index_type(100_001, "auto", 100_000) == "ivf"
    assert choose_index_type(10, "hnsw", 100_000) == "hnsw"
    with pytest.raises(IndexConfigError, match="auto, flat, hnsw, ivf"):
        choose_index_type(10, "annoy", 100_000)


def test_ivf_list_count_follows_sqrt_but_keeps_enough_points_per_list():
    assert ivf_list_count(1_000_000) == 4000
    assert ivf_list_count(3000) == 3000 // 39  # 4 * sqrt(3000) would leave ~14 points per list
    assert ivf_list_count(10) == 1


@pytest.mark.parametrize("index_type, expected_class", [
    ("flat", faiss.IndexFlatIP), ("hnsw", faiss.IndexHNSWFlat), ("ivf", faiss.IndexIVFFlat),
])
def test_each_index_type_finds_the_exact_neighbours_and_records_its_recall(index_type, expected_class):
    vectors = clustered_vectors()
    index, info = build_index(vectors, index_type, exact_max_apps=100_000, seed=1, recall_queries=300)
    assert isinstance(index, expected_class) and index.ntotal == len(vectors)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert info["type"] == index_type
    assert info["recall_at_10_vs_exact"] >= 0.9
    assert info["build_seconds"] >= 0
    if index_type == "flat":
        assert info["recall_queries"] == 0 and info["recall_at_10_vs_exact"] == 1.0
    else:
        assert info["recall_queries"] == 300
        assert set(info["params"]) == ({"nlist", "nprobe"} if index_type == "ivf" else {"M", "efConstruction", "efSearch"})


def test_search_settings_survive_serialisation():
    vectors = clustered_vectors(n=2000)
    for index_type, read_setting in (("ivf", lambda i: faiss.extract_index_ivf(i).nprobe),
                                     ("hnsw", lambda i: faiss.downcast_index(i).hnsw.efSearch)):
        index, info = build_index(vectors, index_type, seed=1, recall_queries=100)
        restored = faiss.deserialize_index(faiss.serialize_index(index))
        key = "nprobe" if index_type == "ivf" else "efSearch"
        assert read_setting(restored) == info["params"][key]


def test_recall_is_measured_and_the_search_widened_until_it_meets_the_target():
    """Unclustered vectors are IVF's worst case: one probe misses most neighbours, and the
    builder raises nprobe above its default until recall@10 reaches the target."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = np.arange(0, 4000, 20)
    exact = exact_neighbors(vectors, rows, 10)
    starved = faiss.IndexIVFFlat(faiss.IndexFlatIP(32), 32, 100, faiss.METRIC_INNER_PRODUCT)
    starved.train(vectors)
    starved.add(vectors)
    starved.nprobe = 1
    assert recall_vs_exact(starved, vectors, rows, exact) < 0.5
    _, info = build_index(vectors, "ivf", seed=1, recall_queries=200)
    assert info["recall_at_10_vs_exact"] >= 0.95
    assert info["params"]["nprobe"] > 16


def test_tied_duplicates_count_as_correct_neighbours():
    """Cold apps with the same metadata share one embedding; any of the tied apps is a right answer."""
    vectors = np.repeat(clustered_vectors(n=50), 20, axis=0)
    _, info = build_index(vectors, "hnsw", seed=1, recall_queries=200)
    assert info["recall_at_10_vs_exact"] >= 0.95


def test_an_index_needs_two_apps():
    with pytest.raises(IndexConfigError, match="at least 2"):
        build_index(np.ones((1, 4), dtype=np.float32))


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_an_asymmetric_model_indexes_item_vectors_and_measures_recall_with_its_queries(index_type):
    from models.embedding import asymmetric_vectors

    rng = np.random.default_rng(4)
    factors = clustered_vectors(3000, dim=15) * rng.uniform(0.2, 1.0, (3000, 1))
    queries, items = (v.astype(np.float32) for v in asymmetric_vectors(factors))
    index, info = build_index(queries, index_type, exact_max_apps=100_000, seed=1, recall_queries=200, item_vectors=items)
    assert index.ntotal == 3000 and info["recall_at_10_vs_exact"] >= 0.95
    if index_type == "flat":  # exact: the query's top-5 by the inner product of the factors
        _, found = index.search(queries[:50], 6)
        inner = factors[:50] @ factors.T
        for row in range(50):
            assert set([j for j in np.argsort(-inner[row], kind="stable") if j != row][:5]) <= set(found[row].tolist())
    with pytest.raises(IndexConfigError, match="same shape"):
        build_index(queries, "flat", item_vectors=items[:10])


def ivf_flat(items: np.ndarray, nlist: int, nprobe: int) -> faiss.IndexIVFFlat:
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(items.shape[1]), items.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1
    index.train(items)
    index.add(items)
    index.nprobe = nprobe
    return index


@pytest.mark.parametrize(("nlist", "nprobe", "kk", "sign"), [(40, 6, 11, 1), (40, 1, 11, 1), (300, 4, 11, 1), (40, 6, 11, -1)])
def test_list_scan_finds_what_faiss_search_finds(nlist, nprobe, kk, sign):
    # 300 lists of ~7 apps: many lists hold fewer than kk apps, so no bound is set from them.
    # sign -1: items in the positive orthant, queries in the negative one: every score is negative
    # (the merge orders scores through their bit patterns, where negative floats run backwards).
    items = clustered_vectors(2000, dim=16, seed=3)
    queries = clustered_vectors(500, dim=16, seed=3)[::-1].copy()  # asymmetric: queries are not the items
    if sign < 0:
        items, queries = np.abs(items), -np.abs(queries)
    index = ivf_flat(items, nlist, nprobe)
    scan = ListScan(index)
    probes = scan.probes(queries)
    np.testing.assert_array_equal(probes, index.quantizer.search(queries, nprobe)[1])
    scores, ids = scan.search(queries, probes, kk)
    expected_scores, expected_ids = index.search(queries, kk)
    assert ListScan.supports(index) and not ListScan.supports(faiss.IndexFlatIP(16))
    assert ((ids < 0) == (expected_ids < 0)).all()  # as many found (FAISS pads with -FLT_MAX, we with -inf)
    assert (np.diff(scores, axis=1)[ids[:, 1:] >= 0] <= 0).all()  # best first
    assert (sign < 0) == (scores[ids >= 0].max() < 0)
    np.testing.assert_allclose(scores[ids >= 0], expected_scores[expected_ids >= 0], atol=1e-5)
    # the same neighbours; an exact tie (duplicate vectors) may come out in either order
    same = (ids == expected_ids).all(axis=1)
    assert same.mean() > 0.99
    for row in np.flatnonzero(~same):
        assert set(ids[row]) == set(expected_ids[row]) or np.allclose(scores[row][ids[row] >= 0], expected_scores[row][ids[row] >= 0], atol=1e-6)


def test_list_scan_pads_queries_whose_lists_hold_fewer_than_kk_items():
    items = clustered_vectors(60, dim=8, clusters=3, seed=5)
    index = ivf_flat(items, 1, 1)
    index.nprobe = 1
    queries = items[:4]
    probes = index.quantizer.search(queries, 1)[1]
    scores, ids = ListScan(index).search(queries, probes, 80)
    assert (ids[:, 60:] == -1).all() and np.isneginf(scores[:, 60:]).all()
    assert sorted(ids[0, :60]) == list(range(60))
    missing = np.full_like(probes, -1)  # no probed list: nothing found, nothing raised
    assert (ListScan(index).search(queries, missing, 5)[1] == -1).all()


def test_largest_lists_each_row_s_k_largest_best_first_ties_by_the_lower_column():
    rng = np.random.default_rng(5)
    # many ties, a last chunk shorter than the others (5,003 columns), and k as wide as the row
    for rows, columns, k in ((30, 5_003, 11), (7, 12, 12), (4, 900, 1), (3, 40, 39)):
        scores = rng.integers(0, 7, size=(rows, columns)).astype(np.float32)
        columns_found, values_found = largest(scores.copy(), k)
        expected = np.array([np.lexsort((np.arange(columns), -row))[:k] for row in scores])
        assert (columns_found == expected).all()
        assert (values_found == np.take_along_axis(scores, expected, axis=1)).all()
