"""The taxonomy world: a store prepare accepts whole, deterministic, and an oracle that reads its truth."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from models import dataset, layout, storage
from pipelines.simulators import world as simulate_world
from steps import prepare

END = datetime(2026, 11, 2, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = storage.normalize(tmp_path_factory.mktemp("world"))
    summary = simulate_world.simulate_world(uri, apps=300, users=400, days=3, events_per_day=3000, seed=5, end=END)
    manifest = prepare.run(layout.feedback_uri(uri), layout.catalog_uri(uri), storage.join(uri, "prepared"),
                           window_end=END, window_days=3, holdout_fraction=0.3, max_bad_fraction=0.0)
    return uri, summary, manifest


def test_every_line_is_a_valid_event_and_prepare_keeps_it(store):
    uri, summary, manifest = store
    assert summary["lines"] > 9000  # 9000 impressions plus conversions
    assert manifest["counts"]["quarantined"] == 0
    train = dataset.read_table(storage.join(uri, "prepared"), dataset.TRAIN_INTERACTIONS)
    assert train["app_id"].nunique() > 100 and train["user_id"].nunique() > 100


def test_same_seed_gives_the_same_files(store, tmp_path):
    uri, _, _ = store
    again = storage.normalize(tmp_path)
    simulate_world.simulate_world(again, apps=300, users=400, days=3, events_per_day=3000, seed=5, end=END)
    first = sorted(storage.list_files(layout.feedback_uri(uri)))
    second = sorted(storage.list_files(layout.feedback_uri(again)))
    assert len(first) == len(second) > 0
    assert [storage.read_bytes(a) for a in first] == [storage.read_bytes(b) for b in second]


def test_users_move_between_related_apps():
    world = simulate_world.make_world(apps=400, users=10, seed=2)
    assert np.allclose(world.related_weight.sum(axis=1), 1.0) and np.allclose(world.partner_exposure.sum(axis=1), 1.0)
    similarity = world.positions @ world.positions.T
    related_similarity = np.take_along_axis(similarity, world.related, axis=1).mean()
    assert related_similarity > similarity.mean() + 0.3
    # Long tail: the top 1% of apps hold far more than 1% of the popularity.
    assert np.sort(world.popularity)[::-1][:4].sum() > 0.1


def test_expected_coengagement_is_a_probability_favouring_related_apps():
    world = simulate_world.make_world(apps=400, users=10, seed=2)
    rows = np.array([0, 7, 99])
    scores = simulate_world.expected_coengagement(world, rows)
    assert scores.shape == (3, 400) and (scores >= 0).all() and (scores.sum(axis=1) <= 1.0).all()
    related = np.take_along_axis(scores, world.related[rows], axis=1).mean()
    assert related > 5 * scores.mean()
    # hand check of one entry: partner exposure only (j not related to q)
    q, j = 0, next(j for j in range(400) if j not in world.related[0] and j != 0)
    expected = (1 - simulate_world.FOLLOW_FRACTION) * (world.partner_share @ world.partner_exposure)[j] / (
        1 + np.exp(-(simulate_world.CLICK_BIAS + simulate_world.CLICK_SLOPE * float(world.positions[q] @ world.positions[j]))))
    assert scores[0, j] == pytest.approx(expected, rel=1e-5)
