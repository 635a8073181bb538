"""`appsim drift check` end to end on a local store."""

import gzip
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd
import pytest

from models import layout, storage
from tests.pipelines.cli.runner import run

START = datetime(2026, 3, 2, tzinfo=timezone.utc)


# --- drift --------------------------------------------------------------------------------------
CATEGORIES = ("Games", "Finance", "Shopping", "Travel")


def write_events(store, events):
    by_hour = {}
    for event in events:
        by_hour.setdefault(event["ts"][:13], []).append(orjson.dumps(event))
    for hour, lines in by_hour.items():
        folder = datetime.strptime(hour, "%Y-%m-%dT%H").strftime("%Y/%m/%d/%H")
        storage.write_bytes(storage.join(layout.feedback_uri(str(store)), folder, "part.gz"), gzip.compress(b"\n".join(lines)))


def traffic(start, days, seed, games_weight=1.0, ctr_flip=False):
    rng = np.random.default_rng(seed)
    weights = np.array([games_weight if i % 4 == 0 else 1.0 for i in range(80)])
    true_ctr = np.linspace(0.02, 0.12, 80)
    actual = true_ctr[::-1] if ctr_flip else true_ctr
    apps = rng.choice(80, size=days * 2_000, p=weights / weights.sum()).tolist()
    clicks = (rng.random(len(apps)) < actual[apps]).tolist()
    events = []
    for n, app in enumerate(apps):
        ts = (start + timedelta(seconds=n * 43.2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        if n % 10 == 0:
            events.append({"event_id": f"p{seed}-{n}", "event_type": "prediction", "ts": ts, "request_id": f"r{seed}-{n}",
                           "partner_id": "p", "app_id": f"app-{app}", "model_version": 1, "arm": "champion",
                           "neighbors": [], "scores": [], "predicted_ctr": float(true_ctr[app])})
        events.append({"event_id": f"c{seed}-{n}", "event_type": "click", "ts": ts, "app_id": f"app-{app}",
                       "campaign_id": "c", "partner_id": "p", "user_id": "u", "clicked": clicks[n]})
    return events


@pytest.fixture
def drift_store(tmp_path):
    catalog = pd.DataFrame({"app_id": [f"app-{i}" for i in range(80)],
                            "category": [CATEGORIES[i % 4] for i in range(80)],
                            "region": ["NA", "EU"] * 40, "pricing_model": ["free"] * 80})
    with storage.open_uri(layout.catalog_uri(str(tmp_path)), "wb") as handle:
        catalog.to_parquet(handle)
    write_events(tmp_path, traffic(START, 14, seed=1))
    return tmp_path


def drift(store, *extra, expect):
    at = (START + timedelta(days=21)).isoformat()
    return json.loads(run("drift", "check", "--at", at, "--reference-days", 14, *extra, "--store", store, expect=expect))


def test_the_thresholds_shown_in_help_are_the_statistics_defaults():
    import inspect

    from evaluation.drift import check_drift
    from pipelines.cli.drift import DEFAULTS

    parameters = inspect.signature(check_drift).parameters
    assert DEFAULTS == {name: parameters[name].default for name in DEFAULTS}
    assert "[default: 500; x>=1]" in " ".join(run("drift", "check", "--help").split())


def test_drift_check_is_quiet_without_drift(drift_store):
    write_events(drift_store, traffic(START + timedelta(days=14), 7, seed=2))
    report = drift(drift_store, expect=0)
    assert report["action"] == "ok" and report["windows"]["reference"]["source"] == "the 14 days before"
    assert report["prediction"]["recent_apps"] > 50


def test_drift_check_flags_a_category_shift_with_exit_code_3(drift_store):
    write_events(drift_store, traffic(START + timedelta(days=14), 7, seed=2, games_weight=5.0))
    out = drift_store / "drift.json"
    report = drift(drift_store, "--output", out, expect=3)
    assert report["action"] == "alert" and any("category" in r for r in report["reasons"])
    assert json.loads(out.read_text())["exit_code"] == 3


def test_drift_check_asks_for_a_retrain_when_predictions_degrade(drift_store):
    write_events(drift_store, traffic(START + timedelta(days=14), 7, seed=2, ctr_flip=True))
    report = drift(drift_store, expect=3)
    assert report["action"] == "retrain" and report["prediction"]["ratio"] > 1.5


def test_drift_check_on_nine_requests_reports_insufficient_data_not_an_alert(drift_store):
    games = [e for e in traffic(START + timedelta(days=14), 7, seed=2, games_weight=50.0) if e["event_type"] == "prediction"]
    write_events(drift_store, games[:9])
    report = drift(drift_store, expect=0)
    assert report["action"] == "insufficient_data" and not any(f["alert"] for f in report["features"])
    assert any("insufficient data for the queries mix" in r for r in report["reasons"])
    assert drift(drift_store, "--min-count", 5, expect=3)["action"] == "alert"


@pytest.mark.parametrize("drift_days, expect, action", [(0, 0, "ok"), (7, 3, "alert")])
def test_drift_check_on_the_simulator_catches_its_drift_mode_only(tmp_path, drift_days, expect, action):
    from pipelines.simulators.marketplace import simulate

    end = datetime(2026, 5, 4, tzinfo=timezone.utc)
    summary = simulate(str(tmp_path), apps=300, users=800, days=21, events_per_day=2_000, seed=5, fault_rate=0.02,
                       end=end, drift_days=drift_days)
    report = json.loads(run("drift", "check", "--at", end.isoformat(), "--reference-days", 14, "--store", tmp_path,
                            expect=expect))
    assert report["action"] == action
    queries = next(f for f in report["features"] if (f["population"], f["feature"]) == ("queries", "category"))
    if drift_days:
        assert queries["psi"] > 0.2 and queries["largest_shifts"][0]["value"] in summary["drift"]["categories"]
    else:
        assert max(f["psi"] for f in report["features"]) < 0.1


