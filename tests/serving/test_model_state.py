"""Loading, refusing and hot-swapping models (the watcher's logic, called directly)."""

import gc
import os
import weakref

import pytest

from models import storage
from models.registry_sqlite import SQLiteRegistry
from serving.model_state import CHALLENGER, CHAMPION, ModelManager
from serving.settings import ServingSettings
from tests.serving.helpers import build_artifact, publish


@pytest.fixture()
def registry(tmp_path):
    return SQLiteRegistry(tmp_path / "registry.db")


def manager_for(registry, **settings):
    return ModelManager(ServingSettings(registry=registry.uri, **settings), registry)


def test_not_ready_until_something_is_approved(registry, tmp_path):
    manager = manager_for(registry)
    publish(registry, tmp_path, build_artifact(), status="PendingManualApproval")
    assert not manager.refresh() and manager.state is None
    assert "no loadable Approved model version" in manager.not_ready_reason
    version = publish(registry, tmp_path, build_artifact(seed=1))
    assert manager.refresh()
    assert [(a.name, a.model.version, a.weight) for a in manager.state.arms] == [(CHAMPION, version, 1.0)]
    assert manager.swaps == 0  # the first load is not a swap


def test_new_approved_version_is_swapped_in_atomically(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    manager = manager_for(registry)
    manager.refresh()
    before = manager.state
    assert not manager.refresh() and manager.state is before  # nothing new: same object
    v2 = publish(registry, tmp_path, build_artifact(seed=2))
    assert manager.refresh()
    assert manager.state is not before and manager.state.arms[0].model.version == v2
    assert before.arms[0].model.version == 1  # the old state object is untouched (in-flight requests)
    assert manager.swaps == 1


def test_served_models_are_frozen_out_of_the_collector_and_a_replaced_one_is_freed(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    manager = manager_for(registry)
    try:
        manager.refresh()
        first = manager.state.arms[0].model.predictor
        # Frozen: full collections no longer walk the model (gc.get_objects skips the permanent generation).
        assert not any(o is first for o in gc.get_objects())
        replaced = weakref.ref(first)
        del first
        publish(registry, tmp_path, build_artifact(seed=2))
        assert manager.refresh()
        assert replaced() is None  # the old version's memory is returned after the swap
    finally:
        gc.unfreeze()


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    manager = manager_for(registry)
    manager.refresh()
    bad = publish(registry, tmp_path, build_artifact(seed=3), corrupted=True)
    assert not manager.refresh()
    assert manager.state.arms[0].model.version == 1
    assert manager.refused[bad].reason == "checksum_mismatch"
    assert "checksum mismatch for embeddings.npy" in manager.describe()["refused_versions"][str(bad)]
    assert manager.load_failures == 1
    manager.refresh()
    assert manager.load_failures == 1  # refused once, not retried every poll


def test_at_start_a_corrupt_newest_version_falls_back_to_the_previous_approved(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    bad = publish(registry, tmp_path, build_artifact(seed=4), corrupted=True)
    manager = manager_for(registry)
    manager.refresh()
    assert manager.state.arms[0].model.version == 1 and bad in manager.refused


def test_challenger_takes_its_weight_and_follows_the_champion(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    challenger = publish(registry, tmp_path, build_artifact(seed=5), status="PendingManualApproval")
    manager = manager_for(registry, challenger_version=challenger, challenger_weight=0.3)
    manager.refresh()
    assert [(a.name, a.model.version, a.weight) for a in manager.state.arms] == [
        (CHAMPION, 1, pytest.approx(0.7)), (CHALLENGER, challenger, 0.3)]
    routed = {manager.state.route("p", f"app-{i:05d}").name for i in range(100)}
    assert routed == {CHAMPION, CHALLENGER}
    # The challenger wins and is approved: it becomes the champion, and the experiment ends.
    registry.set_status(challenger, "Approved")
    assert manager.refresh()
    assert [(a.name, a.model.version) for a in manager.state.arms] == [(CHAMPION, challenger)]


def test_endpoint_mode_serves_the_model_folder(tmp_path):
    build_artifact().save(tmp_path / "model")
    manager = ModelManager(ServingSettings(model_dir=str(tmp_path / "model"), model_version=4))
    assert manager.refresh()
    assert manager.state.arms[0].model.version == 4
    assert manager.describe()["mode"] == "endpoint"


def test_endpoint_mode_with_a_broken_folder_is_not_ready(tmp_path):
    (tmp_path / "model").mkdir()
    manager = ModelManager(ServingSettings(model_dir=str(tmp_path / "model")))
    assert not manager.refresh()
    assert manager.state is None and "holds no manifest.json" in manager.not_ready_reason


def test_the_active_experiment_sets_the_challenger_and_its_ramped_weight(registry, tmp_path):
    from models.experiments import Experiment, SQLiteExperiments

    experiments = SQLiteExperiments(tmp_path / "experiments.db")
    v1 = publish(registry, tmp_path, build_artifact())
    v2 = publish(registry, tmp_path, build_artifact(seed=5), status="PendingManualApproval")
    manager = ModelManager(ServingSettings(registry=registry.uri), registry, experiments)
    manager.refresh()
    assert [a.name for a in manager.state.arms] == [CHAMPION]  # no experiment yet

    experiment = experiments.create(Experiment.start(v1, v2, 0.1))
    assert manager.refresh()
    assert [(a.name, a.model.version, a.weight) for a in manager.state.arms] == [
        (CHAMPION, v1, pytest.approx(0.9)), (CHALLENGER, v2, 0.1)]

    experiment = experiments.update(experiment.record("ramp", 0.2, "won the first week"))
    assert manager.refresh()
    assert manager.state.weights[CHALLENGER] == 0.2

    experiments.update(experiment.record("stop", 0.0, "regression"))
    assert manager.refresh()
    assert [(a.name, a.model.version) for a in manager.state.arms] == [(CHAMPION, v1)]


def test_settings_default_to_the_store_experiments(tmp_path):
    settings = ServingSettings(store=str(tmp_path))
    assert settings.experiments_uri() == f"sqlite://{tmp_path / 'experiments.db'}"
    assert ServingSettings(store="s3://bucket/x", registry="sagemaker://g").experiments_uri() is None


def truncate(artifact_uri: str) -> bytes:
    """Cut a tarball in half, as an interrupted copy leaves it; returns the intact bytes."""
    path = storage.local_path(artifact_uri)
    intact = path.read_bytes()
    path.write_bytes(intact[: len(intact) // 2])
    return intact


def test_a_truncated_champion_at_start_falls_back_to_the_previous_approved(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    bad = publish(registry, tmp_path, build_artifact(seed=4))
    truncate(registry.get(bad).artifact_uri)
    manager = manager_for(registry)
    assert manager.refresh()
    assert manager.state.arms[0].model.version == 1
    assert manager.refused[bad].reason == "corrupt" and "EOFError" in manager.refused[bad].detail


def test_a_refused_version_is_tried_again_only_when_its_file_changes(registry, tmp_path):
    publish(registry, tmp_path, build_artifact())
    bad = publish(registry, tmp_path, build_artifact(seed=4))
    uri = registry.get(bad).artifact_uri
    intact = truncate(uri)
    manager = manager_for(registry)
    manager.refresh()
    for _ in range(3):
        assert not manager.refresh()
    assert manager.load_failures == 1  # once per content, not every poll
    storage.write_bytes(uri, intact)  # restored from a backup: a new file
    assert manager.refresh()
    assert manager.state.arms[0].model.version == bad and bad not in manager.refused


def test_a_missing_artifact_is_retried_with_backoff_and_served_once_it_reappears(registry, tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("serving.model_state.time.monotonic", lambda: clock[0])
    publish(registry, tmp_path, build_artifact())
    late = publish(registry, tmp_path, build_artifact(seed=6))
    path = storage.local_path(registry.get(late).artifact_uri)
    hidden = path.with_name("in-flight.tmp")
    os.replace(path, hidden)  # e.g. a restore or sync still copying it
    manager = manager_for(registry, poll_seconds=10)
    assert manager.refresh() and manager.state.arms[0].model.version == 1  # the older one serves meanwhile
    waits = []
    for _ in range(4):
        retry = manager.retrying[late]
        waits.append(retry.due - clock[0])
        assert not manager.refresh() and manager.load_failures == retry.attempts  # held back until due
        clock[0] = retry.due
        assert not manager.refresh()
    assert waits == [10, 20, 40, 80]  # doubling from the poll interval
    assert manager.retrying[late].reason == "missing" and late not in manager.refused
    assert str(late) in manager.describe()["retrying_versions"]
    os.replace(hidden, path)
    clock[0] = manager.retrying[late].due
    assert manager.refresh()
    assert manager.state.arms[0].model.version == late and not manager.retrying
