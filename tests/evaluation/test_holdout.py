from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from evaluation.holdout import EmptyHoldout, build_queries, load_queries, observed_ctr
from models import dataset

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def table(rows: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"user_id": u, "app_id": a, "clicks": c, "conversions": v, "first_ts": T, "last_ts": T} for u, a, c, v in rows],
        columns=list(dataset.INTERACTION_COLUMNS),
    )


def as_dict(queries) -> dict[tuple[int, str], set[str]]:
    """(user, query app) -> relevant app ids."""
    out = {}
    for i, (user, item) in enumerate(zip(queries.query_users, queries.query_items)):
        rel = queries.relevant.items[queries.relevant.offsets[i] : queries.relevant.offsets[i + 1]]
        out[(int(user), queries.app_ids[item])] = {queries.app_ids[j] for j in rel}
    return out


def test_each_engaged_app_is_a_query_whose_relevant_set_is_the_users_other_apps():
    interactions = table([
        ("alice", "x", 1, 0), ("alice", "y", 0, 1), ("alice", "z", 2, 0),
        ("bob", "x", 1, 0),                          # one app: says nothing about similarity
        ("carol", "y", 1, 0), ("carol", "z", 1, 1), ("carol", "w", 0, 0),  # w: no positive
    ])
    queries = build_queries(interactions, seed=0)
    assert queries.app_ids == ["x", "y", "z"]
    assert queries.n_users == 2 and queries.n_queries == 5 and queries.n_query_apps == 3
    assert as_dict(queries) == {
        (0, "x"): {"y", "z"}, (0, "y"): {"x", "z"}, (0, "z"): {"x", "y"},
        (1, "y"): {"z"}, (1, "z"): {"y"},
    }


def test_user_sample_is_capped_and_deterministic():
    rows = [(f"u{u}", f"a{(u + j) % 20}", 1, 0) for u in range(50) for j in range(3)]
    first = build_queries(table(rows), seed=3, max_users=10)
    again = build_queries(table(rows), seed=3, max_users=10)
    other = build_queries(table(rows), seed=4, max_users=10)
    assert first.n_users == 10 and first.n_queries == 30
    assert as_dict(first) == as_dict(again)
    assert as_dict(first) != as_dict(other)


def test_a_heavy_user_contributes_a_capped_number_of_queries_with_full_relevant_sets():
    rows = [("heavy", f"a{i}", 1, 0) for i in range(10)]
    queries = build_queries(table(rows), seed=0, max_queries_per_user=4)
    assert queries.n_queries == 4
    assert (queries.relevant.sizes == 9).all()
    assert len(set(queries.query_items.tolist())) == 4


def test_no_user_with_two_apps_is_a_clear_error():
    with pytest.raises(EmptyHoldout, match="widen window_days"):
        build_queries(table([("a", "x", 1, 0), ("b", "y", 1, 0)]), seed=0)


def test_load_queries_reads_the_prepared_holdout(tmp_path):
    dataset.write_table(table([("a", "x", 1, 0), ("a", "y", 1, 0)]), str(tmp_path), dataset.HOLDOUT_INTERACTIONS)
    queries = load_queries(str(tmp_path), seed=0)
    assert queries.query_app_ids == ["x", "y"]


def test_observed_ctr_keeps_apps_with_enough_impressions():
    stats = pd.DataFrame({"app_id": ["b", "a", "c"], "impressions": [100, 40, 29], "clicks": [5, 4, 29]})
    ctr = observed_ctr(stats, seed=0, min_impressions=30)
    assert ctr.index.tolist() == ["a", "b"]
    assert np.allclose(ctr.to_numpy(), [0.1, 0.05])


def test_observed_ctr_samples_at_most_max_apps_deterministically():
    stats = pd.DataFrame({"app_id": [f"a{i:02d}" for i in range(40)], "impressions": 100, "clicks": 1})
    sample = observed_ctr(stats, seed=1, max_apps=10)
    assert len(sample) == 10 and sample.index.is_monotonic_increasing
    assert sample.index.tolist() == observed_ctr(stats, seed=1, max_apps=10).index.tolist()
