"""`appsim ab`, `appsim drift check` and `appsim monitoring` end to end on a local store."""

import gzip
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner

from models import layout, storage
from models.experiments import open_experiments
from models.registry_backends import open_registry
from pipelines.cli import cli
from pipelines.simulators.experiment import ExperimentScenario, write_experiment_feedback

START = datetime(2026, 3, 2, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    registry = open_registry(f"sqlite://{tmp_path / 'registry.db'}")
    registry.register("file:///models/v1/model.tar.gz", "Approved", {"recall_at_10": 0.3}, {})
    registry.register("file:///models/v2/model.tar.gz", "PendingManualApproval", {"recall_at_10": 0.32}, {})
    return tmp_path


def run(*args, expect=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def start_experiment(store, weight=0.5):
    return run("ab", "start", "--challenger", 2, "--weight", weight, "--at", START.isoformat(), "--id", "exp-1",
               "--store", store)


def test_start_status_and_the_one_active_rule(store):
    assert "challenger v2 50%" in start_experiment(store)
    status = json.loads(run("ab", "status", "--json", "--store", store))
    assert (status["experiment_id"], status["champion_version"], status["challenger_weight"]) == ("exp-1", 1, 0.5)
    assert "already active" in run("ab", "start", "--challenger", 2, "--store", store, expect=2)
    assert "started by hand at 50%" in run("ab", "status", "--store", store)


def test_start_refuses_a_rejected_or_older_challenger(store):
    open_registry(f"sqlite://{store / 'registry.db'}").set_status(2, "Rejected", "bad")
    assert "is Rejected" in run("ab", "start", "--challenger", 2, "--store", store, expect=2)
    assert "does not exist" in run("ab", "start", "--challenger", 9, "--store", store, expect=2)


def test_report_waits_then_promotes_a_clear_winner_and_writes_the_plots(store):
    start_experiment(store, weight=0.5)
    scenario = ExperimentScenario(true_lift=0.3, requests_per_day=3_000, impressions_per_request=1, seed=3)
    assert write_experiment_feedback(layout.feedback_uri(str(store)), scenario, START, 8, challenger_weight=0.5) > 0

    early = run("ab", "report", "--at", (START + timedelta(days=3)).isoformat(), "--apply", "--store", store)
    assert "CTR: lift" in early and "decision: wait" in early and "too early" in early and "applied" not in early

    at = (START + timedelta(days=8)).isoformat()
    report = json.loads(run("ab", "report", "--at", at, "--apply", "--json", "--store", store))
    arms = report["arms"]
    assert arms["champion"]["requests"] + arms["challenger"]["requests"] == 24_000
    assert arms["challenger"]["ctr"] > arms["champion"]["ctr"]
    assert report["sample_ratio"]["mismatch"] is False
    assert report["decision"]["action"] == "promote" and "P(CTR lift > 5%)" in report["decision"]["reason"]
    assert report["applied"]["status"] == "completed"
    assert 0.9 < report["comparisons"]["ctr"]["prob_challenger_better"] <= 1
    html = storage.read_bytes(report["report_uri"]).decode()
    assert "data:image/png;base64," in html and "exp-1" in html
    assert storage.read_bytes(report["report_uri"].replace("report.html", "posteriors.png"))[:4] == b"\x89PNG"
    assert open_registry(f"sqlite://{store / 'registry.db'}").champion().version == 2
    experiment = open_experiments(f"sqlite://{store / 'experiments.db'}").get("exp-1")
    assert (experiment.status, experiment.challenger_weight) == ("completed", 1.0)
    assert "no active experiment" in run("ab", "report", "--store", store, expect=2)


def test_manual_stop_can_reject_and_promote_approves(store):
    start_experiment(store)
    assert "challenger Rejected" in run("ab", "stop", "--reject", "--reason", "looks wrong", "--store", store)
    registry = open_registry(f"sqlite://{store / 'registry.db'}")
    assert registry.get(2).status == "Rejected"
    registry.set_status(2, "PendingManualApproval", "retry")
    run("ab", "start", "--challenger", 2, "--id", "exp-2", "--store", store)
    assert "promoted" in run("ab", "promote", "--store", store)
    assert registry.champion().version == 2


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


# --- monitoring ---------------------------------------------------------------------------------
def test_monitoring_dry_run_and_rules():
    planned = json.loads(run("monitoring", "apply", "--dry-run", "--dimension", "service=prod", "--alarm-topic", "arn:x"))
    requests = planned["alarms"]
    assert {r["AlarmName"] for r in requests} >= {"appsim-HighErrorRate", "appsim-ZeroTraffic"}
    assert all(r["AlarmActions"] == ["arn:x"] for r in requests)
    charts = [w for w in planned["dashboard"]["body"]["widgets"] if w["type"] == "metric"]
    rows = [m for w in charts for m in w["properties"]["metrics"] if isinstance(m[0], str)]
    assert rows and all(dict(zip(m[2:-1:2], m[3:-1:2]))["service"] == "prod" for m in rows)
    assert "histogram_quantile(0.99" in run("monitoring", "rules")
    assert "NAME=VALUE" in run("monitoring", "apply", "--dry-run", "--dimension", "oops", expect=2)


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


def test_ab_simulate_walks_an_experiment_through_the_rules():
    result = json.loads(run("ab", "simulate", "--lift", "-0.03", "--seed", 2, "--json"))
    assert result["outcome"] == "stopped" and result["weights"] == [0.1, 0.0]
    printed = run("ab", "simulate", "--lift", "-0.03", "--seed", 2)
    assert "stop     significant regression" in printed and "outcome after" in printed
