"""Popular apps answered from the neighbour export (APPSIM_POPULAR_APPS): the same answers as FAISS,
only for the served model's own export, and off unless asked for."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from models import layout
from models.predictor import Predictor
from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from serving.model_state import load_model
from serving.popular import TablePredictor, most_shown
from serving.settings import ServingSettings, SettingsError, settings_from_env
from steps.export_neighbors import export
from tests.serving.helpers import ivf_artifact, publish, running_server, wait_for

K = 8
POPULAR = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Version 1 registered and exported (k = K) in a local store."""
    folder = tmp_path_factory.mktemp("store")
    artifact = ivf_artifact(400, nlist=10, nprobe=3)
    publish(SQLiteRegistry(folder / "registry.db"), folder, artifact)
    export(artifact, layout.neighbors_uri(str(folder), 1), version=1, k=K, batch=64, threads=2)
    return folder, artifact


def test_popular_apps_get_the_faiss_answers_from_the_table_and_others_still_search(store):
    folder, artifact = store
    settings = ServingSettings(store=str(folder), spill_dir=str(folder / "spill"), feedback_uri="none",
                               popular_apps=POPULAR)
    faiss_answers = Predictor(artifact)
    popular = most_shown(artifact, POPULAR)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_for(lambda: client.get("/ping").status_code == 200)
        served = client.get("/v1/models").json()["arms"][0]["popular_table"]
        assert served == {"uri": layout.neighbors_uri(str(folder), 1), "apps": POPULAR, "k": K}
        others = [a for a in artifact.app_ids if a not in set(popular)][:10]
        for app_id, k in [(a, K) for a in popular] + [(a, 3) for a in popular[:10]] + [(a, K + 2) for a in popular[:5]] \
                + [(a, K) for a in others]:
            answer = client.get(f"/v1/apps/{app_id}/similar", params={"k": k}).json()["neighbors"]
            expected = faiss_answers.similar(app_id, k)
            assert [n["app_id"] for n in answer] == [n.app_id for n in expected]
            assert [n["score"] for n in answer] == pytest.approx([n.score for n in expected], abs=1e-6)


def test_the_table_answers_only_for_its_own_model(store, tmp_path):
    folder, artifact = store
    uri = artifact.save_tarball(str(tmp_path / "model.tar.gz"))
    model = load_model(1, uri, POPULAR, layout.neighbors_uri(str(folder), 1))
    assert isinstance(model.predictor, TablePredictor) and len(model.predictor.table.rows) == POPULAR
    other = ivf_artifact(400, nlist=10, nprobe=3, shift=0.5)  # a retrained model: other embeddings, same version number
    other_uri = other.save_tarball(str(tmp_path / "other" / "model.tar.gz"))
    model = load_model(1, other_uri, POPULAR, layout.neighbors_uri(str(folder), 1))
    assert type(model.predictor) is Predictor
    assert "not of the served version 1" in model.popular_table["error"]
    model = load_model(2, uri, POPULAR, str(tmp_path / "never-exported"))
    assert type(model.predictor) is Predictor and "appsim neighbors export --version 2" in model.popular_table["error"]
    assert load_model(1, uri).popular_table is None  # off by default


def test_popular_apps_need_an_export_folder_when_there_is_no_store(tmp_path):
    with pytest.raises(SettingsError, match="APPSIM_NEIGHBORS_URI"):
        settings_from_env({"APPSIM_MODEL_DIR": str(tmp_path), "APPSIM_POPULAR_APPS": "100"})
    settings = settings_from_env({"APPSIM_MODEL_DIR": str(tmp_path), "APPSIM_POPULAR_APPS": "100",
                                  "APPSIM_NEIGHBORS_URI": str(tmp_path / "neighbors")})
    assert settings.neighbors_export_uri(3) == str(tmp_path / "neighbors")
    assert ServingSettings(store=str(tmp_path)).neighbors_export_uri(3) is None


def test_a_damaged_export_leaves_the_version_served_from_faiss(store, tmp_path):
    folder, artifact = store
    uri = artifact.save_tarball(str(tmp_path / "model.tar.gz"))
    export_uri = layout.neighbors_uri(str(folder), 1)
    manifest, parquet = (Path(folder) / "neighbors" / "v1" / name for name in ("manifest.json", "neighbors.parquet"))
    original_manifest, original_parquet = manifest.read_bytes(), parquet.read_bytes()
    damages = [(lambda: manifest.write_bytes(original_manifest[:20]), "is not JSON"),
               (lambda: manifest.write_text("[1, 2]"), "has no positive k"),
               (lambda: parquet.write_bytes(original_parquet[: len(original_parquet) // 2]), "")]
    try:
        for damage, reason in damages:
            manifest.write_bytes(original_manifest)
            parquet.write_bytes(original_parquet)
            damage()
            model = load_model(1, uri, POPULAR, export_uri)
            assert type(model.predictor) is Predictor, reason
            assert model.popular_table["error"] and reason in model.popular_table["error"]
            assert model.predictor.similar(artifact.app_ids[0], 3)  # still answers, from FAISS
    finally:  # the module's store is shared with the other tests
        manifest.write_bytes(original_manifest)
        parquet.write_bytes(original_parquet)
