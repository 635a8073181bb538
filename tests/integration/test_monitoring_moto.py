"""The alarm definitions applied to CloudWatch (moto), and their Prometheus rendering."""

import json

import boto3
import pytest
import yaml
from moto import mock_aws

from pipelines.monitoring import ALARMS, apply_alarms, cloudwatch_alarms, prometheus_rules


@pytest.fixture
def cloudwatch(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


def by_name(client):
    return {a["AlarmName"]: a for a in client.describe_alarms()["MetricAlarms"]}


def test_apply_creates_the_seed_alarms_in_cloudwatch(cloudwatch):
    sns = boto3.client("sns", region_name="us-east-1")
    topic = sns.create_topic(Name="appsim-alerts")["TopicArn"]
    names = apply_alarms(cloudwatch, cloudwatch_alarms(dimensions={"service": "appsim-prod"}, actions=[topic]))
    alarms = by_name(cloudwatch)
    assert set(names) == set(alarms) == {f"appsim-{a.name}" for a in ALARMS}

    errors = alarms["appsim-HighErrorRate"]
    assert (errors["Threshold"], errors["EvaluationPeriods"], errors["ComparisonOperator"]) == (5.0, 2, "GreaterThanThreshold")
    stats = {m["Id"]: m for m in errors["Metrics"]}
    assert stats["result"]["Expression"] == "100 * errors / requests"
    assert stats["errors"]["MetricStat"]["Period"] == 300
    assert {"Name": "status_class", "Value": "5xx"} in stats["errors"]["MetricStat"]["Metric"]["Dimensions"]
    assert stats["requests"]["MetricStat"]["Metric"]["MetricName"] == "appsim_requests_total"

    latency = alarms["appsim-HighLatency"]
    assert (latency["MetricName"], latency["ExtendedStatistic"], latency["Threshold"], latency["Period"]) == (
        "appsim_request_duration_seconds", "p99", 0.5, 600)
    assert latency["Dimensions"] == [{"Name": "service", "Value": "appsim-prod"}]

    zero = alarms["appsim-ZeroTraffic"]
    assert (zero["ComparisonOperator"], zero["Threshold"], zero["Period"], zero["TreatMissingData"]) == (
        "LessThanThreshold", 1.0, 300, "breaching")
    assert alarms["appsim-SinkQueueBacklog"]["MetricName"] == "appsim_sink_queue_depth"
    assert alarms["appsim-SinkSpillBacklog"]["MetricName"] == "appsim_spill_pending_batches"
    assert all(a["AlarmActions"] == [topic] for a in alarms.values())


def test_applying_twice_updates_in_place(cloudwatch):
    apply_alarms(cloudwatch, cloudwatch_alarms())
    apply_alarms(cloudwatch, cloudwatch_alarms())
    assert len(by_name(cloudwatch)) == len(ALARMS)


def test_alarm_fires_on_a_breaching_metric(cloudwatch):
    apply_alarms(cloudwatch, cloudwatch_alarms())
    cloudwatch.set_alarm_state(AlarmName="appsim-SinkQueueBacklog", StateValue="ALARM", StateReason="test")
    assert by_name(cloudwatch)["appsim-SinkQueueBacklog"]["StateValue"] == "ALARM"


def test_prometheus_rules_use_the_series_serving_exposes():
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    metrics.requests.labels("/v1/similar", "200", "champion").inc()
    metrics.latency.labels("/v1/similar", "champion").observe(0.01)
    exposed = metrics.render().decode()
    rules = prometheus_rules()["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [a.name for a in ALARMS]
    assert next(r for r in rules if r["alert"] == "HighErrorRate")["for"] == "10m"
    for series in ("appsim_requests_total", "appsim_request_duration_seconds_bucket"):
        assert series in exposed
    for alarm in ALARMS:
        for metric in alarm.metrics:
            assert metric.name in alarm.prometheus
    yaml.safe_dump(prometheus_rules())


def test_apply_puts_the_five_panel_dashboard(cloudwatch):
    from pipelines.monitoring import DASHBOARD, apply_dashboard, cloudwatch_dashboard

    body = cloudwatch_dashboard(dimensions={"service": "prod"})
    assert apply_dashboard(cloudwatch, body) == "appsim-similarity-service"
    stored = json.loads(cloudwatch.get_dashboard(DashboardName="appsim-similarity-service")["DashboardBody"])
    headings = [w["properties"]["markdown"] for w in stored["widgets"] if w["properties"].get("markdown", "").startswith("## ")]
    assert headings == ["## Traffic", "## Latency", "## Infrastructure", "## A/B testing", "## Business"]
    titles = {w["properties"]["title"] for w in stored["widgets"] if w["type"] == "metric"}
    assert {"Requests per second", "Latency p50 / p95 / p99", "Traffic split by arm", "Revenue per hour (reported conversions)"} <= titles
    assert len(titles) == sum(c.kind != "text" for p in DASHBOARD for c in p.charts)
    apply_dashboard(cloudwatch, body)  # an upsert
    assert [d["DashboardName"] for d in cloudwatch.list_dashboards()["DashboardEntries"]] == ["appsim-similarity-service"]


def test_the_committed_grafana_dashboard_is_the_generated_one():
    from pathlib import Path

    from pipelines.monitoring import grafana_dashboard

    committed = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "appsim-dashboard.json"
    assert json.loads(committed.read_text()) == grafana_dashboard(), "regenerate: appsim monitoring grafana --output " + str(committed)
    rows = [p["title"] for p in grafana_dashboard()["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Infrastructure", "A/B testing", "Business"]
