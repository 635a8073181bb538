"""Bulk neighbours: the export equals the Predictor's answers, row by row, with any index and batch size."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from models.predictor import Predictor
from steps.export_neighbors import NEIGHBOR_SCHEMA, export, read_export
from tests.serving.helpers import build_artifact


@pytest.mark.parametrize("batch", [7, 4096])
def test_export_equals_similar_and_predict_for_every_app(tmp_path, batch):
    artifact = build_artifact(n_apps=120, dim=8)
    result = export(artifact, str(tmp_path / "v3"), version=3, k=6, batch=batch)
    manifest, table = read_export(str(tmp_path / "v3"))
    assert (result.apps, manifest["apps"], manifest["k"], manifest["model_version"]) == (120, 120, 6, 3)
    assert table.schema == NEIGHBOR_SCHEMA
    predictor = Predictor(artifact)
    rows = table.to_pylist()
    assert [r["app_id"] for r in rows] == artifact.app_ids
    for row in rows[::5]:
        prediction = predictor.predict(app_id=row["app_id"], k=6)
        assert row["neighbor_ids"] == [n.app_id for n in prediction.neighbors]
        assert row["app_id"] not in row["neighbor_ids"]
        assert row["scores"] == pytest.approx([n.score for n in prediction.neighbors], abs=1e-6)
        assert (row["ctr"], row["ctr_low"], row["ctr_high"]) == pytest.approx(
            (prediction.ctr, prediction.ctr_low, prediction.ctr_high), rel=1e-12)
        assert (row["cvr"], row["cvr_low"], row["cvr_high"]) == pytest.approx(
            (prediction.cvr, prediction.cvr_low, prediction.cvr_high), rel=1e-12)
        assert row["support_impressions"] == prediction.support_impressions


def test_k_over_the_catalog_gives_shorter_rows_not_padding(tmp_path):
    artifact = build_artifact(n_apps=5, dim=4)
    export(artifact, str(tmp_path / "v1"), version=1, k=10)
    _, table = read_export(str(tmp_path / "v1"))
    assert [len(ids) for ids in table.column("neighbor_ids").to_pylist()] == [4] * 5
    assert all(np.isfinite(s).all() for s in table.column("scores").to_pylist())


def approximate_index(kind: str, embeddings: np.ndarray) -> faiss.Index:
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(embeddings.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    else:  # IVF: the export searches in list order, the API one app at a time
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(embeddings.shape[1]), embeddings.shape[1], 12,
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
        index.nprobe = 3
    index.add(embeddings)
    return index


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_an_approximate_index_exports_the_same_rows_as_one_query_at_a_time(tmp_path, kind):
    artifact = build_artifact(n_apps=300, dim=8)
    artifact.index = approximate_index(kind, artifact.embeddings)
    export(artifact, str(tmp_path / "v2"), version=2, k=5, batch=64, threads=2)
    _, table = read_export(str(tmp_path / "v2"))
    predictor = Predictor(artifact)
    rows = table.to_pylist()
    assert [r["app_id"] for r in rows] == artifact.app_ids  # app order, whatever the search order
    for row in rows[::7]:
        assert row["neighbor_ids"] == [n.app_id for n in predictor.similar(row["app_id"], 5)]


def test_an_unfinished_export_is_named_not_read(tmp_path):
    (tmp_path / "v9").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished neighbour export"):
        read_export(str(tmp_path / "v9"))
