"""`neighbors.export_on_approval`: a local retrain that registers an Approved version exports its
neighbours table; a Rejected version, or the setting off, exports nothing."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from models import layout
from models.artifact import ModelArtifact
from pipelines.config import NeighborsSettings, PipelineConfig, load_config
from pipelines.runner import LocalRunner
from pipelines.simulators.marketplace import simulate
from steps.export_neighbors import read_export

END = datetime(2026, 11, 2, tzinfo=timezone.utc)
DAYS = 4
K = 5


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("simulated") / "store"
    simulate(str(store), apps=80, users=200, days=DAYS, events_per_day=800, seed=3, fault_rate=0.0, end=END)
    return store


def configured(simulated: Path, folder: Path, export_on_approval: bool) -> PipelineConfig:
    store = folder / "store"
    shutil.copytree(simulated, store)
    config = load_config(store=str(store)).with_overrides(
        {"window_end": END.isoformat(), "window_days": DAYS, "bootstrap_samples": 50, "embedding_dim": 16})
    return config.model_copy(update={"neighbors": NeighborsSettings(export_on_approval=export_on_approval, k=K)})


def test_an_approved_version_gets_its_neighbours_and_a_rejected_one_none(simulated, tmp_path):
    config = configured(simulated, tmp_path, export_on_approval=True)
    first = LocalRunner(config).run().result
    assert (first["version"], first["status"]) == (1, "Approved")
    assert first["neighbors_uri"] == layout.neighbors_uri(config.store, 1)
    manifest, table = read_export(first["neighbors_uri"])
    artifact = ModelArtifact.load_uri(first["artifact_uri"], tmp_path / "artifact")
    assert (manifest["model_version"], manifest["k"], manifest["apps"]) == (1, K, len(artifact.app_ids))
    assert table.column("app_id").to_pylist() == artifact.app_ids
    assert manifest["embeddings_sha256"] == artifact.checksum
    assert all(0 < len(ids) <= K for ids in table.column("neighbor_ids").to_pylist())

    # the same data again: no improvement, so the gate rejects version 2 and nothing is exported for it
    second = LocalRunner(config).run().result
    assert (second["version"], second["status"]) == (2, "Rejected")
    assert second["neighbors_uri"] is None
    assert not Path(layout.neighbors_uri(config.store, 2).removeprefix("file://")).exists()


def test_with_the_setting_off_an_approved_version_exports_nothing(simulated, tmp_path):
    config = configured(simulated, tmp_path, export_on_approval=False)
    result = LocalRunner(config).run().result
    assert (result["version"], result["status"]) == (1, "Approved")
    assert result["neighbors_uri"] is None
    assert not (tmp_path / "store" / "neighbors").exists()
