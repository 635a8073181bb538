"""The staged rollout driven only by the scheduled `appsim ab decide`: auto-start, ramp, promote,
guardrail rollback, archive and the SNS messages of each step (moto)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest
import yaml
from click.testing import CliRunner
from moto import mock_aws

from evaluation.ab_decision import GuardrailRules, ServingArmMetrics, check_guardrails
from models import layout, storage
from models.experiments import Experiment, open_experiments
from models.registry_backends import open_registry
from pipelines.cli import cli
from pipelines.config import REPOSITORY_CONFIG, ConfigError, load_config
from pipelines.rollout import DailyDecision, parse_snapshot, snapshot_delta
from pipelines.simulators.experiment import ExperimentScenario, write_experiment_feedback
from serving.metrics import ServingMetrics
from tests.models.sns_inbox import topic_with_inbox

START = datetime(2026, 3, 2, tzinfo=timezone.utc)
ENDPOINT = "/v1/apps/{app_id}/similar"


@pytest.fixture
def sns(aws_env):
    with mock_aws():
        yield topic_with_inbox("appsim-decisions")


class Serving:
    """Serving's real metrics exporter, fed per arm as a server would be, its /metrics text saved
    where the decision reads it (the guardrails' source)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.metrics = ServingMetrics()

    def day(self, weight: float, requests: int, error_rate: dict[str, float], latency_s: dict[str, float]) -> None:
        for arm, share in (("champion", 1 - weight), ("challenger", weight)):
            count = round(requests * share)
            errors = round(count * error_rate[arm])
            self.metrics.requests.labels(ENDPOINT, "200", arm).inc(count - errors)
            self.metrics.requests.labels(ENDPOINT, "500", arm).inc(errors)
            for _ in range(count):
                self.metrics.latency.labels(ENDPOINT, arm).observe(latency_s[arm])
        storage.write_bytes(self.uri, self.metrics.render())


class CloudWatchServing:
    """The same traffic as ``Serving``, as the CloudWatch agent publishes it (pipelines/monitoring.py's
    conventions): per arm, the request sum, the 5xx sum under ``status_class``, in the ``appsim`` namespace."""

    dimensions = [{"Name": "service", "Value": "appsim"}]

    def __init__(self):
        self.client = boto3.client("cloudwatch", region_name="us-east-1")
        self.days = 0

    def day(self, weight: float, requests: int, error_rate: dict[str, float], latency_s: dict[str, float]) -> None:
        at = START + timedelta(days=self.days, hours=12)  # inside the day the next decision looks back on
        self.days += 1
        data = []
        for arm, share in (("champion", 1 - weight), ("challenger", weight)):
            count = round(requests * share)
            arm_dims = [*self.dimensions, {"Name": "arm", "Value": arm}]
            data += [{"MetricName": "appsim_requests_total", "Dimensions": arm_dims, "Timestamp": at, "Value": count},
                     {"MetricName": "appsim_requests_total", "Timestamp": at, "Value": round(count * error_rate[arm]),
                      "Dimensions": [*arm_dims, {"Name": "status_class", "Value": "5xx"}]}]
        self.client.put_metric_data(Namespace="appsim", MetricData=data)


def write_config(tmp_path, topic: str, serving_metrics: str, source: str = "prometheus"):
    raw = yaml.safe_load(REPOSITORY_CONFIG.read_text())
    raw["parameters"]["approval_status"] = "PendingManualApproval"
    raw["rollout"].update(auto_start=True, min_days=3, min_requests=150)
    raw["rollout"]["guardrails"].update(serving_metrics=serving_metrics, min_requests=100, source=source)
    raw["notifications"]["sns_topic_arn"] = topic
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def store(tmp_path):
    registry = open_registry(f"sqlite://{tmp_path / 'store' / 'registry.db'}")
    registry.register("file:///models/v1/model.tar.gz", "Approved", {"recall_at_10": 0.30}, {})
    registry.register("file:///models/v2/model.tar.gz", "PendingManualApproval", {"recall_at_10": 0.33}, {},
                      status_reason="recall@10 +10% vs champion v1")
    return tmp_path / "store"


def decide(store, config, day: int) -> dict:
    result = CliRunner().invoke(cli, ["ab", "decide", "--json", "--at", (START + timedelta(days=day)).isoformat(),
                                      "--store", str(store), "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def run_schedule(store, config, serving: Serving, lift: float, error_rate: dict[str, float], days: int) -> list[dict]:
    """Day 0 the scheduled decision starts the experiment; then each day serving answers at the
    experiment's current weight and the decision runs again, until the experiment is over."""
    # CTR 20% so that a few hundred impressions a day decide quickly (the test stays fast)
    scenario = ExperimentScenario(true_lift=lift, base_ctr=0.2, requests_per_day=800, impressions_per_request=1)
    outcomes = [decide(store, config, 0)]
    experiments = open_experiments(f"sqlite://{store / 'experiments.db'}")
    for day in range(days):
        active = experiments.active()
        if active is None:
            break
        weight = active.challenger_weight
        write_experiment_feedback(layout.feedback_uri(str(store)), dataclasses.replace(scenario, seed=day),
                                  START + timedelta(days=day), 1, challenger_weight=weight)
        serving.day(weight, 2_000, error_rate, {"champion": 0.004, "challenger": 0.0045})
        outcomes.append(decide(store, config, day + 1))
    return outcomes


@pytest.fixture
def schedule(store, tmp_path, sns):
    """Run the schedule for a challenger with this true CTR lift and these 5xx rates; returns each
    day's `ab decide --json`, the config and what the topic received."""
    topic, received = sns
    serving = Serving(storage.join(str(store), "scrape", "metrics.prom"))
    config = write_config(tmp_path, topic, serving.uri)

    def run(lift: float, challenger_errors: float, days: int) -> tuple[list[dict], object, list[dict]]:
        outcomes = run_schedule(store, config, serving, lift, {"champion": 0.002, "challenger": challenger_errors}, days)
        return outcomes, config, received()

    return run


def test_the_daily_decision_walks_a_better_challenger_from_10_percent_to_promoted(store, schedule):
    outcomes, _, messages = schedule(lift=0.6, challenger_errors=0.002, days=12)

    assert outcomes[0]["started"]["challenger_version"] == 2 and outcomes[0]["started"]["challenger_weight"] == 0.1
    experiment = open_experiments(f"sqlite://{store / 'experiments.db'}").list()[0]
    assert [(s.action, s.challenger_weight) for s in experiment.history] == [
        ("start", 0.1), ("ramp", 0.2), ("ramp", 0.3), ("ramp", 0.4), ("ramp", 0.5), ("promote", 1.0)]
    promoted_at = experiment.history[-1].at - experiment.history[-2].at
    assert promoted_at >= timedelta(days=3), "promoted only after 3 stable days at the final weight"
    assert experiment.status == "completed"
    assert open_registry(f"sqlite://{store / 'registry.db'}").champion().version == 2
    assert all(o["guardrails"] is None or o["guardrails"]["verdict"] in ("ok",) or
               o["guardrails"]["verdict"].startswith("not judged") for o in outcomes)

    assert [m["kind"] for m in messages] == ["ab_start"] + ["ab_decision"] * 5
    assert messages[-1]["numbers"]["action"] == "promote"
    assert messages[-1]["numbers"]["ctr_comparison"]["prob_lift_above_min"] >= 0.95
    record = storage.read_json(outcomes[-1]["record_uri"])
    assert record["decision"]["action"] == "promote" and "serving_snapshot" in record


def test_a_challenger_failing_in_serving_is_rolled_back_before_its_ab_verdict(store, schedule):
    outcomes, config, messages = schedule(lift=0.3, challenger_errors=0.05, days=5)

    rollback = outcomes[1]
    assert rollback["decision"]["action"] == "rollback"
    assert "challenger 5xx rate 5.00% > champion 0.22% + 1.00%" in rollback["decision"]["reason"]
    assert rollback["applied"]["status"] == "stopped" and rollback["applied"]["challenger_weight"] == 0.0
    assert len(outcomes) == 2, "nothing is decided for a rolled-back experiment"
    version = open_registry(f"sqlite://{store / 'registry.db'}").get(2)
    assert version.status == "Rejected" and "guardrail broken" in version.status_reason
    assert [m["kind"] for m in messages] == ["ab_start", "rollback"]
    numbers = messages[1]["numbers"]
    assert numbers["guardrails"]["challenger"]["error_rate"] == pytest.approx(0.05, abs=0.002)
    assert numbers["guardrails"]["champion"]["requests"] == 1_800
    # the rolled-back version is never started again
    assert decide(store, config, 3)["started"] is None


def test_on_aws_the_guardrails_read_cloudwatch_and_roll_back_a_failing_challenger(store, tmp_path, sns):
    topic, received = sns
    config = write_config(tmp_path, topic, "", source="cloudwatch")
    outcomes = run_schedule(store, config, CloudWatchServing(), 0.3, {"champion": 0.002, "challenger": 0.05}, 5)

    rollback = outcomes[1]
    assert rollback["decision"]["action"] == "rollback"
    assert "challenger 5xx rate 5.00% > champion 0.22% + 1.00%" in rollback["decision"]["reason"]
    assert rollback["guardrails"]["champion"]["requests"] == 1_800
    assert rollback["guardrails"]["challenger"]["requests"] == 200
    record = storage.read_json(rollback["record_uri"])
    assert record["guardrail_window"] == {"source": "cloudwatch", "start": START.isoformat(),
                                          "end": (START + timedelta(days=1)).isoformat()}
    assert open_registry(f"sqlite://{store / 'registry.db'}").get(2).status == "Rejected"
    assert [m["kind"] for m in received()] == ["ab_start", "rollback"]


def test_a_healthy_challenger_passes_the_cloudwatch_guardrails_day_after_day(store, tmp_path, sns):
    topic, _ = sns
    config = write_config(tmp_path, topic, "", source="cloudwatch")
    outcomes = run_schedule(store, config, CloudWatchServing(), 0.6, {"champion": 0.002, "challenger": 0.002}, 3)
    judged = [o["guardrails"] for o in outcomes[1:]]
    assert [g["verdict"] for g in judged] == ["ok"] * 3
    # each day's window holds that day's traffic only: 2,000 requests split by the day's weight
    assert [g["champion"]["requests"] + g["challenger"]["requests"] for g in judged] == [2_000] * 3
    assert all(o["decision"]["action"] != "rollback" for o in outcomes[1:])


def test_guardrails_from_cloudwatch_and_a_serving_metrics_url_are_one_or_the_other(tmp_path):
    path = write_config(tmp_path, "", "http://127.0.0.1:8080/metrics", source="cloudwatch")
    with pytest.raises(ConfigError, match="source is cloudwatch but serving_metrics is set"):
        load_config(path)


def test_guardrails_judge_latency_and_wait_for_enough_requests():
    fast = ServingArmMetrics("champion", 1_000, 1, ((0.005, 990), (0.01, 1_000), (float("inf"), 1_000)))
    slow = ServingArmMetrics("challenger", 1_000, 1, ((0.005, 100), (0.01, 900), (0.05, 1_000), (float("inf"), 1_000)))
    decision, numbers = check_guardrails(fast, slow, GuardrailRules(max_p99_increase=0.25))
    assert decision is not None and decision.action == "rollback" and "p99" in decision.reason
    assert numbers["challenger"]["p99_ms"] == pytest.approx(46.0)
    assert check_guardrails(fast, fast)[0] is None
    few = ServingArmMetrics("challenger", 50, 50)
    decision, numbers = check_guardrails(fast, few)
    assert decision is None and numbers["verdict"].startswith("not judged")


def test_serving_counters_are_diffed_between_decisions_and_survive_a_restart():
    metrics = ServingMetrics()
    metrics.requests.labels(ENDPOINT, "200", "challenger").inc(90)
    metrics.requests.labels(ENDPOINT, "503", "challenger").inc(10)
    metrics.requests.labels(ENDPOINT, "404", "none").inc(7)
    first = parse_snapshot(metrics.render().decode())
    assert first["challenger"]["requests"] == 100 and first["challenger"]["errors"] == 10 and "none" not in first
    metrics.requests.labels(ENDPOINT, "200", "challenger").inc(100)
    second = parse_snapshot(metrics.render().decode())
    assert snapshot_delta(second, first)["challenger"]["requests"] == 100
    assert snapshot_delta(second, first)["challenger"]["errors"] == 0
    fresh = ServingMetrics()  # the server restarted: its counters start again from zero
    fresh.requests.labels(ENDPOINT, "200", "challenger").inc(5)
    assert snapshot_delta(parse_snapshot(fresh.render().decode()), second)["challenger"]["requests"] == 5


def test_versions_replaced_for_30_days_are_archived_unless_referenced(tmp_path):
    registry = open_registry(f"sqlite://{tmp_path / 'registry.db'}")
    for number in range(1, 4):
        registry.register(f"file:///models/v{number}/model.tar.gz", "Approved", {}, {})
    config = load_config(REPOSITORY_CONFIG, str(tmp_path))
    experiments = open_experiments(f"sqlite://{tmp_path / 'experiments.db'}")
    daily = DailyDecision(config, experiments, registry)
    now = registry.champion().created_at
    assert daily.run(now + timedelta(days=29)).archived == []
    # v1 is in an active experiment (as the champion it is compared with): referenced, kept
    experiments.create(Experiment.start(1, 3, 0.1, at=now, experiment_id="keeps-v1"))
    assert daily.run(now + timedelta(days=31)).archived == [2]
    assert registry.get(2).status == "Rejected" and registry.get(2).status_reason.startswith("archived:")
    assert registry.get(1).status == "Approved" and registry.champion().version == 3
    assert registry.get(2).artifact_uri.endswith("v2/model.tar.gz")
