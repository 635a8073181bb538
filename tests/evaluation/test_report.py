"""report.html: curves and segments computed like the gate's metrics, and a self-contained page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation import report
from evaluation.baselines import Ranking
from evaluation.compare import score_rankings
from evaluation.holdout import build_queries
from models import dataset, layout, storage
from steps import evaluate
from tests.evaluation import builders
from tests.evaluation.test_baselines import interactions


@pytest.fixture(scope="module")
def holdout_queries():
    ids = builders.app_ids()
    return ids, build_queries(builders.interactions(ids, 80, 4, seed=3, user_prefix="h"), seed=0)


def random_ranking(ids: list[str], n_queries: int, k: int, seed: int) -> Ranking:
    rng = np.random.default_rng(seed)
    return Ranking(f"random {seed}", np.stack([rng.permutation(len(ids))[:k] for _ in range(n_queries)]), ids)


def test_the_curve_at_10_is_the_gates_recall_at_10(holdout_queries):
    ids, queries = holdout_queries
    for seed in range(3):
        ranking = random_ranking(ids, queries.n_queries, 50 if seed else 10, seed)
        curve = report.recall_curve(queries, ranking, max_k=30)
        gate = score_rankings(queries, ranking.rankings[:, :10], ids, catalog_size=len(ids),
                              ctr_predicted=np.zeros(0), ctr_observed=np.zeros(0)).metrics()["recall_at_10"]
        assert curve.shape == (30,) and curve[9] == pytest.approx(gate)
        assert np.all((curve >= 0) & (curve <= 1))


def test_a_perfect_ranking_has_recall_one_at_every_k():
    holdout = interactions([("h1", "a", 1), ("h1", "b", 1), ("h1", "c", 1), ("h2", "a", 1), ("h2", "d", 1)])
    queries = build_queries(holdout, seed=0)
    relevant = [set(queries.relevant.items[queries.relevant.offsets[i]:queries.relevant.offsets[i + 1]])
                for i in range(queries.n_queries)]
    rows = [sorted(r) + [i for i in range(len(queries.app_ids)) if i not in r] for r in relevant]
    rankings = np.array([[i for i in row if i != q] + [-1] for row, q in zip(rows, queries.query_items)])
    curve = report.recall_curve(queries, Ranking("perfect", rankings, queries.app_ids), max_k=5)
    assert np.allclose(curve, 1.0)


def test_segments_are_computed_per_user_within_the_segment():
    holdout = interactions([("h1", "a", 1), ("h1", "b", 1), ("h2", "a", 1), ("h2", "c", 1)])
    queries = build_queries(holdout, seed=0)  # items: a=0, b=1, c=2; queries h1:a,b  h2:a,c
    # Each query's top-1: a -> b (hit for h1, miss for h2), b -> a (hit), c -> b (miss).
    top = {0: 1, 1: 0, 2: 1}
    ranking = Ranking("m", np.array([[top[q]] for q in queries.query_items]), queries.app_ids)
    labels = np.array(["x" if queries.app_ids[q] == "a" else "y" for q in queries.query_items])
    segments = {s.value: s for s in report.segment_recall(queries, [ranking], labels)}
    assert segments["x"].recall["m"] == pytest.approx(0.5) and segments["x"].users == 2  # h1 1.0, h2 0.0
    assert segments["y"].recall["m"] == pytest.approx(0.5) and segments["y"].users == 2  # b hit (h1), c miss (h2)


def test_a_rankings_note_is_listed_on_the_page(holdout_queries):
    ids, queries = holdout_queries
    noted = random_ranking(ids, queries.n_queries, 10, seed=1)
    noted = Ranking(noted.name, noted.rankings, noted.app_ids, note="searched with an IVF index")
    evaluation = {"decision": "rejected", "holdout": {"users": queries.n_users, "queries": queries.n_queries, "apps": 40}}
    page = report.build(evaluation, queries, [noted], {}, notes=["the catalog is stale"])
    assert "<li class='note'>the catalog is stale</li>" in page
    assert "<li class='note'>searched with an IVF index</li>" in page


def test_query_segments_label_cold_apps_and_catalog_fields():
    holdout = interactions([("h1", "a", 1), ("h1", "new", 1)])
    queries = build_queries(holdout, seed=0)
    train = interactions([("u1", "a", 1), ("u2", "b", 1)])
    catalog = pd.DataFrame({"app_id": ["a", "b"], "category": ["games", "finance"], "region": ["EU", None]})
    labels = report.query_segments(queries, train, catalog)
    by_app = {a: {k: v[i] for k, v in labels.items()} for i, a in enumerate(queries.query_app_ids)}
    assert by_app["a"] == {"cold start vs warm": "warm", "category": "games", "region": "EU"}
    assert by_app["new"] == {"cold start vs warm": "cold", "category": "unknown", "region": "unknown"}
    assert set(report.query_segments(queries, train, None)) == {"cold start vs warm"}


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_the_evaluate_step_writes_a_self_contained_report_beside_evaluation_json(tmp_path):
    ids = builders.app_ids()
    prepared = storage.normalize(tmp_path / "prepared")
    builders.write_prepared(prepared, ids)
    catalog = pd.DataFrame({"app_id": ids, "category": [f"cat{builders.cluster_of(a)}" for a in ids],
                            "region": ["EU" if i % 2 else "NA" for i in range(len(ids))],
                            "features": [["tag"]] * len(ids), "description": ["an app"] * len(ids)})
    dataset.write_table(catalog, storage.normalize(tmp_path / "catalog"), "apps.parquet")
    storage.write_json(storage.join(prepared, dataset.MANIFEST),
                       {"inputs": {"catalog_uri": storage.normalize(tmp_path / "catalog" / "apps.parquet")}})
    builders.make_artifact(ids, builders.clustered_embeddings(ids)).save_tarball(str(tmp_path / "model" / "model.tar.gz"))

    result = evaluate.run(prepared, storage.normalize(tmp_path / "model" / "model.tar.gz"), str(tmp_path / "out"),
                          champion=None, min_relative_improvement=0.03, bootstrap_samples=50, seed=1,
                          approval_status="Approved")

    page = (Path(tmp_path) / "out" / layout.EVALUATION_PAGE).read_text()
    assert (Path(tmp_path) / "out" / layout.EVALUATION_REPORT).exists()
    assert not re.search(r"<script|https?://|src=['\"](?!data:)", page)  # nothing fetched from anywhere
    images = _images(page)
    assert len(images) == 4 and all(i.startswith(b"\x89PNG\r\n\x1a\n") for i in images)  # curves + 3 segment plots
    assert result["decision"].upper() in page and f"{result['comparison']['relative_improvement']:+.2%}" in page
    for name in ("candidate", "popularity", "item-kNN", "content-only", "category", "region", "cold start vs warm"):
        assert name in page


def test_without_a_catalog_the_report_says_what_is_missing(tmp_path):
    ids = builders.app_ids()
    prepared = str(tmp_path / "prepared")
    builders.write_prepared(prepared, ids)  # no manifest: the catalog cannot be found
    builders.make_artifact(ids, builders.clustered_embeddings(ids)).save_tarball(str(tmp_path / "model" / "model.tar.gz"))
    evaluate.run(prepared, storage.normalize(tmp_path / "model" / "model.tar.gz"), str(tmp_path / "out"), champion=None,
                 min_relative_improvement=0.03, bootstrap_samples=20, seed=1, approval_status="Approved")
    page = (tmp_path / "out" / layout.EVALUATION_PAGE).read_text()
    assert "catalog could not be read" in page and "<th>content-only</th>" not in page
    assert len(_images(page)) == 2  # curves + cold/warm
