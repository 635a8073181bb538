"""`appsim ab` end to end on a local store."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from models import layout, storage
from models.experiments import open_experiments
from models.registry_backends import open_registry
from pipelines.simulators.experiment import ExperimentScenario, write_experiment_feedback
from tests.pipelines.cli.runner import run

START = datetime(2026, 3, 2, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    registry = open_registry(f"sqlite://{tmp_path / 'registry.db'}")
    registry.register("file:///models/v1/model.tar.gz", "Approved", {"recall_at_10": 0.3}, {})
    registry.register("file:///models/v2/model.tar.gz", "PendingManualApproval", {"recall_at_10": 0.32}, {})
    return tmp_path


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


def test_report_without_impressions_says_how_much_data_it_needs_instead_of_a_lift(store):
    start_experiment(store)
    printed = run("ab", "report", "--at", (START + timedelta(days=1)).isoformat(), "--store", store)
    assert "CTR: not enough data: each arm needs at least 10 clicks" in printed
    assert "champion 0 clicks in 0 impressions" in printed and "10,000 requests per arm" in printed
    assert "lift" not in printed and "decision: wait" in printed
    report = json.loads(run("ab", "report", "--at", (START + timedelta(days=1)).isoformat(), "--json", "--store", store))
    assert set(report["not_enough_data"]) == {"ctr", "cvr"}
    html = storage.read_bytes(report["report_uri"]).decode()
    assert "not enough data" in html and "data:image/png" not in html
    assert not storage.exists(report["report_uri"].replace("report.html", "posteriors.png"))


def test_manual_stop_can_reject_and_promote_approves(store):
    start_experiment(store)
    assert "challenger Rejected" in run("ab", "stop", "--reject", "--reason", "looks wrong", "--store", store)
    registry = open_registry(f"sqlite://{store / 'registry.db'}")
    assert registry.get(2).status == "Rejected"
    registry.set_status(2, "PendingManualApproval", "retry")
    run("ab", "start", "--challenger", 2, "--id", "exp-2", "--store", store)
    assert "promoted" in run("ab", "promote", "--store", store)
    assert registry.champion().version == 2


def test_ab_simulate_walks_an_experiment_through_the_rules():
    result = json.loads(run("ab", "simulate", "--lift", "-0.03", "--seed", 2, "--json"))
    assert result["outcome"] == "stopped" and result["weights"] == [0.1, 0.0]
    printed = run("ab", "simulate", "--lift", "-0.03", "--seed", 2)
    assert "stop     significant regression" in printed and "outcome after" in printed
