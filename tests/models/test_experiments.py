"""One contract, run against every experiment-store backend (SQLite and DynamoDB on moto)."""

from datetime import datetime, timedelta, timezone

import pytest
from moto import mock_aws

from models.experiments import (
    CHALLENGER_ARM, CHAMPION_ARM, ConcurrentUpdate, DynamoDBExperiments, Experiment, ExperimentAlreadyActive,
    ExperimentError, ExperimentNotFound, SQLiteExperiments, default_uri, open_experiments,
)
from models.routing import pick_arm

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        yield open_experiments(f"sqlite://{tmp_path / 'experiments.db'}")
        return
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        backend = open_experiments("dynamodb://ab_experiments")
        assert isinstance(backend, DynamoDBExperiments)
        backend.ensure_table()
        yield backend


def started(challenger=3, at=T0, **kwargs) -> Experiment:
    return Experiment.start(champion_version=2, challenger_version=challenger, challenger_weight=0.1, at=at, **kwargs)


def test_create_get_and_active_round_trip(store):
    assert store.active() is None
    saved = store.create(started(end_date=T0 + timedelta(days=15)))
    assert saved.revision == 1
    assert store.get(saved.experiment_id) == saved
    assert store.active() == saved
    assert saved.weights() == {CHAMPION_ARM: 0.9, CHALLENGER_ARM: 0.1}
    assert saved.end_date == T0 + timedelta(days=15)


def test_only_one_experiment_can_be_active(store):
    first = store.create(started())
    with pytest.raises(ExperimentAlreadyActive, match=first.experiment_id):
        store.create(started(challenger=4, at=T0 + timedelta(hours=1)))
    assert [e.experiment_id for e in store.list()] == [first.experiment_id]


def test_ramp_steps_are_recorded_and_a_finished_experiment_frees_the_slot(store):
    experiment = store.create(started())
    ramped = store.update(experiment.record("ramp", 0.2, "winner", {"p": 0.97}, at=T0 + timedelta(days=7)))
    assert ramped.revision == 2 and ramped.challenger_weight == 0.2 and ramped.status == "active"
    assert ramped.weight_changed_at == T0 + timedelta(days=7)
    assert [s.action for s in store.get(ramped.experiment_id).history] == ["start", "ramp"]
    assert store.get(ramped.experiment_id).history[-1].numbers == {"p": 0.97}

    promoted = store.update(ramped.record("promote", 1.0, "stable", at=T0 + timedelta(days=12)))
    assert promoted.status == "completed" and promoted.end_date == T0 + timedelta(days=12)
    assert store.active() is None
    second = store.create(started(challenger=4, at=T0 + timedelta(days=13)))
    assert store.active() == second
    assert [e.experiment_id for e in store.list()] == [second.experiment_id, promoted.experiment_id]


def test_stop_sets_the_challenger_to_zero(store):
    experiment = store.create(started())
    stopped = store.update(experiment.record("stop", 0.0, "regression", at=T0 + timedelta(days=8)))
    assert (stopped.status, stopped.challenger_weight) == ("stopped", 0.0)
    assert store.active() is None
    with pytest.raises(ExperimentError, match="only an active one"):
        stopped.record("ramp", 0.2, "too late")


def test_a_stale_update_is_refused(store):
    experiment = store.create(started())
    store.update(experiment.record("ramp", 0.2, "first job"))
    with pytest.raises(ConcurrentUpdate, match="changed by someone else"):
        store.update(experiment.record("ramp", 0.2, "second job read the same revision"))
    assert store.get(experiment.experiment_id).revision == 2


def test_missing_experiment_names_the_fix(store):
    with pytest.raises(ExperimentNotFound, match="appsim ab status"):
        store.get("nope")


def test_weights_route_with_the_shared_pick_arm():
    experiment = started()
    arms = [pick_arm(f"p{i % 7}", f"app-{i}", experiment.weights()) for i in range(5000)]
    share = arms.count(CHALLENGER_ARM) / len(arms)
    assert 0.08 < share < 0.12


def test_start_validates_its_inputs():
    with pytest.raises(ExperimentError, match="is the champion"):
        Experiment.start(2, 2, 0.1)
    with pytest.raises(ExperimentError, match="between 0 and 1"):
        Experiment.start(2, 3, 1.0)


def test_default_uri_is_in_the_store_and_s3_needs_dynamodb(tmp_path):
    assert default_uri(str(tmp_path)) == f"sqlite://{tmp_path / 'experiments.db'}"
    assert isinstance(open_experiments(default_uri(str(tmp_path))), SQLiteExperiments)
    with pytest.raises(ExperimentError, match="dynamodb://ab_experiments"):
        default_uri("s3://bucket/store")
    with pytest.raises(ExperimentError, match="not understood"):
        open_experiments("redis://x")
