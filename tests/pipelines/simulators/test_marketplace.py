"""The synthetic marketplace: catalog, events that parse, faults where recorded, determinism, signal."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from models import layout, storage
from models.events import InvalidEvent, parse_line
from pipelines.simulators.marketplace import (
    CATEGORIES, FAULT_KINDS, PRICING_MODELS, REGIONS, SimulationError, _HourGenerator, _json_line, make_catalog,
    make_world, nearest_neighbors, simulate,
)

END = datetime(2026, 11, 2, tzinfo=timezone.utc)
SMALL = dict(apps=120, users=300, days=3, events_per_day=1500, seed=7, fault_rate=0.05, end=END)


def _run(store: Path, **overrides) -> dict:
    return simulate(str(store), **(SMALL | overrides))


def _lines(store: Path) -> list[tuple[str, int, bytes]]:
    """(file relative to the store, 1-based line number, line) for every feedback line."""
    root = storage.normalize(str(store))
    out = []
    for uri in storage.list_files(layout.feedback_uri(root)):
        relative = uri[len(root):].lstrip("/")
        out.extend((relative, number, line) for number, line in enumerate(storage.iter_lines(uri), start=1))
    return out


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> tuple[Path, dict]:
    store = tmp_path_factory.mktemp("sim")
    return store, _run(store)


def test_catalog_has_the_design_columns_and_types(small_store):
    store, _ = small_store
    catalog = pd.read_parquet(store / "catalog" / "apps.parquet")
    assert list(catalog.columns[:8]) == ["app_id", "name", "category", "region", "pricing_model", "features",
                                         "description", "avg_rating"]
    assert len(catalog) == SMALL["apps"] and catalog["app_id"].is_unique
    assert set(catalog["category"]) <= {c[0] for c in CATEGORIES}
    assert set(catalog["region"]) <= set(REGIONS)
    assert set(catalog["pricing_model"]) <= set(PRICING_MODELS)
    assert all(3 <= len(f) <= 7 and all(isinstance(x, str) for x in f) for f in catalog["features"])
    assert catalog["avg_rating"].between(1, 5).all() and catalog["avg_rating"].dtype == np.float64
    paid = catalog["pricing_model"].isin(["paid", "subscription"])
    assert (catalog.loc[paid, "price"] > 0).all() and (catalog.loc[~paid, "price"] == 0).all()
    assert all(name in text for name, text in zip(catalog["name"], catalog["description"]))


def test_every_line_is_a_valid_event_or_a_recorded_fault(small_store):
    store, summary = small_store
    catalog_ids = set(pd.read_parquet(store / "catalog" / "apps.parquet")["app_id"])
    faults = pd.read_parquet(store / "ground_truth" / "faults.parquet")
    fault_at = {(row.file, row.line): row for row in faults.itertuples()}
    lines = _lines(store)
    assert len(lines) == summary["lines_written"]
    assert len(fault_at) == len(faults)  # one fault per line

    start, seen_ids, found = END - timedelta(days=SMALL["days"]), set(), defaultdict(int)
    for file, number, line in lines:
        fault = fault_at.get((file, number))
        folder_hour = datetime.strptime(file.split("/appsim")[0], "feedback/%Y/%m/%d/%H").replace(tzinfo=timezone.utc)
        if fault is not None and pd.notna(fault.reason):
            found[fault.kind] += 1
            if fault.kind == "unknown_app_id":
                event = parse_line(line)
                assert event.event_type in ("click", "conversion") and event.app_id not in catalog_ids
            else:
                with pytest.raises(InvalidEvent) as error:
                    parse_line(line)
                assert error.value.reason == fault.reason, (file, number, line)
            continue
        event = parse_line(line)
        # The simulator writes canonical events: re-serialising gives the same object.
        assert event.to_json_dict() == orjson.loads(line)
        assert start <= event.ts < END
        if event.event_type != "prediction":
            assert event.app_id in catalog_ids
        if fault is None:
            assert event.event_id not in seen_ids, f"undeclared duplicate {event.event_id} at {file}:{number}"
            assert folder_hour == event.ts.replace(minute=0, second=0, microsecond=0)
        elif fault.kind == "duplicate":
            found["duplicate"] += 1
            assert event.event_id == fault.event_id and event.event_id in seen_ids
            assert folder_hour >= event.ts.replace(minute=0, second=0, microsecond=0)
        else:
            assert fault.kind == "late"
            found["late"] += 1
            assert folder_hour > event.ts  # a later hour folder than the event time
        seen_ids.add(event.event_id)

    assert dict(found) == {k: v for k, v in summary["faults"].items() if v}
    assert set(FAULT_KINDS) == set(summary["faults"]) and all(summary["faults"].values())
    quarantinable = faults[faults["kind"] != "unknown_app_id"]
    assert summary["expected_prepare"]["quarantined"] == quarantinable["reason"].dropna().value_counts().to_dict()
    assert summary["expected_prepare"]["kept"] == {"app_not_in_catalog": summary["faults"]["unknown_app_id"]}
    bad = sum(summary["expected_prepare"]["quarantined"].values())
    assert 0.015 < bad / len(lines) < 0.035  # about 40% of fault_rate=0.05 is quarantinable


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, small_store):
    store, _ = small_store
    again, other = tmp_path / "again", tmp_path / "other"
    _run(again, workers=2)  # the days drawn by two processes: the same bytes as drawn by one
    _run(other, seed=8)
    files = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((store / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert (store / "catalog/apps.parquet").read_bytes() != (other / "catalog/apps.parquet").read_bytes()
    first_hour = sorted(p.relative_to(store) for p in (store / "feedback").rglob("*.gz"))[0]
    assert (store / first_hour).read_bytes() != (other / first_hour.as_posix().replace("seed7", "seed8")).read_bytes()


def test_event_lines_are_the_producers_json_of_each_event():
    """The lines written in bulk are, byte for byte, orjson's text of each event as a dict (what faults break)."""
    world = make_world(400, 800, seed=3)
    true_top, _ = nearest_neighbors(world.positions)
    end_us = int(END.timestamp() * 1_000_000)
    events, counts = _HourGenerator(world, true_top, end_us).generate(
        end_us - 3_600_000_000, 3000, np.random.default_rng(5), "2026110123")
    assert counts["prediction"] > 50 and counts["conversion"] > 10 and counts["attributed_clicks"] > 0
    lines = events.lines()
    assert len(lines) == len(events) == counts["prediction"] + counts["click"] + counts["conversion"]
    assert lines == [_json_line(events.event(i)) for i in range(len(events))]


def test_ground_truth_neighbours_are_the_exact_latent_top_20(small_store):
    store, _ = small_store
    neighbors = pd.read_parquet(store / "ground_truth" / "neighbors.parquet")
    latent = pd.read_parquet(store / "ground_truth" / "apps.parquet")
    assert len(neighbors) == SMALL["apps"] * 20
    assert (neighbors.groupby("app_id")["rank"].apply(list) == [list(range(1, 21))] * SMALL["apps"]).all()
    assert (neighbors["app_id"] != neighbors["neighbor_id"]).all()

    positions = np.stack(latent["latent"].to_numpy()).astype(np.float64)
    cosine = positions @ positions.T
    np.fill_diagonal(cosine, -np.inf)
    expected = np.argsort(-cosine, axis=1)[:, :20]
    row = {a: i for i, a in enumerate(latent["app_id"])}
    got = neighbors["neighbor_id"].map(row).to_numpy().reshape(SMALL["apps"], 20)
    assert (got == expected).mean() > 0.99  # float32 vs float64 may swap near-ties
    assert np.allclose(neighbors["similarity"], np.take_along_axis(cosine, got, axis=1).ravel(), atol=1e-5)


def test_category_and_features_carry_the_latent_similarity():
    world = make_world(apps=600, users=10, seed=3)
    catalog = make_catalog(world, seed=3)
    positions = world.positions.astype(np.float64)
    category = catalog["category"].to_numpy()
    cosine = positions @ positions.T
    off_diagonal = ~np.eye(len(category), dtype=bool)
    same = (category[:, None] == category[None, :]) & off_diagonal
    assert cosine[same].mean() > cosine[off_diagonal].mean() + 0.3

    # Noisy, not a copy of the cluster: a few apps are mislabelled.
    true_category = np.array([CATEGORIES[k][0] for k in world.cluster])
    assert 0.85 < (true_category == category).mean() < 0.99

    features = [set(f) for f in catalog["features"]]
    nearest = np.argmax(np.where(off_diagonal, cosine, -np.inf), axis=1)
    rng = np.random.default_rng(0)
    random_partner = rng.permutation(len(features))

    def jaccard(a: set, b: set) -> float:
        return len(a & b) / len(a | b)

    near = np.mean([jaccard(features[i], features[j]) for i, j in enumerate(nearest)])
    far = np.mean([jaccard(features[i], features[j]) for i, j in enumerate(random_partner)])
    assert near > 2 * far


def test_co_engagement_beats_popularity_on_a_time_split(tmp_path):
    """The point of the data: users' later clicks are predictable from apps co-engaged earlier."""
    days = 10
    simulate(str(tmp_path), apps=200, users=400, days=days, events_per_day=3000, seed=11, fault_rate=0.0, end=END)
    split = END - timedelta(days=days * 0.2)
    positives: dict[bool, set[tuple[str, str]]] = {True: set(), False: set()}
    for _, _, line in _lines(tmp_path):
        event = orjson.loads(line)
        if event["event_type"] == "click" and event["clicked"] and event["request_id"] is None:
            ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
            positives[ts >= split].add((event["user_id"], event["app_id"]))
    apps = sorted({a for part in positives.values() for _, a in part})
    users = sorted({u for part in positives.values() for u, _ in part})
    app_index, user_index = {a: i for i, a in enumerate(apps)}, {u: i for i, u in enumerate(users)}
    train = np.zeros((len(users), len(apps)))
    for user, app in positives[False]:
        train[user_index[user], app_index[app]] = 1
    holdout = defaultdict(set)
    for user, app in positives[True]:
        if train[user_index[user], app_index[app]] == 0:
            holdout[user_index[user]].add(app_index[app])

    popularity = train.sum(axis=0)
    normalized = train / np.sqrt(np.maximum(popularity, 1))
    item_similarity = normalized.T @ normalized
    np.fill_diagonal(item_similarity, 0)

    def recall_at_10(scores_for) -> float:
        recalls = []
        for user, wanted in holdout.items():
            seen = train[user] > 0
            if not seen.any():
                continue
            scores = np.where(seen, -np.inf, scores_for(seen))
            top = set(np.argsort(-scores, kind="stable")[:10])
            recalls.append(len(top & wanted) / min(len(wanted), 10))
        return float(np.mean(recalls))

    co_engagement = recall_at_10(lambda seen: item_similarity[seen].sum(axis=0))
    by_popularity = recall_at_10(lambda seen: popularity)
    assert co_engagement > 2 * by_popularity and co_engagement > 0.2, (co_engagement, by_popularity)


def test_refuses_a_used_store_unless_overwrite_and_bad_end(tmp_path):
    tiny = dict(apps=30, users=20, days=1, events_per_day=50, seed=1, fault_rate=0.0)
    simulate(str(tmp_path), **tiny, end=END)
    with pytest.raises(SimulationError, match="--overwrite"):
        simulate(str(tmp_path), **tiny, end=END)
    simulate(str(tmp_path), **tiny, end=END, overwrite=True)
    with pytest.raises(SimulationError, match="whole hour"):
        simulate(str(tmp_path / "x"), **tiny, end=END + timedelta(minutes=30))


def test_simulates_into_an_s3_store_with_the_same_bytes(aws_server_env, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="appsim-sim")
    tiny = dict(apps=30, users=20, days=1, events_per_day=100, seed=5, fault_rate=0.1, end=END)
    s3_store, local_store = "s3://appsim-sim/store", storage.normalize(str(tmp_path / "local"))
    summary = simulate(s3_store, **tiny)
    assert simulate(local_store, **tiny) == summary
    local_files = storage.list_files(local_store)
    assert [f[len(local_store):] for f in local_files] == [f[len(s3_store):] for f in storage.list_files(s3_store)]
    last_hour = [f[len(local_store):] for f in local_files if "/feedback/" in f][-1]
    assert storage.read_bytes(s3_store + last_hour) == storage.read_bytes(local_store + last_hour)
