"""The service's alarms, defined once: CloudWatch alarms (``appsim monitoring apply``) and the
equivalent Prometheus alerting rules (``appsim monitoring rules``) come from ``ALARMS``.

The seed's alarms (sections 5.2 and 5.3) over the metrics serving exposes on ``/metrics``
(``serving/metrics.py``):

==================  =====================================================  ==========================
alarm               condition                                              Prometheus series
==================  =====================================================  ==========================
HighErrorRate       5xx > 5% of requests, 5-minute periods, 2 of 2          appsim_requests_total{status}
HighLatency         p99 latency > 500 ms, 10-minute periods, 2 of 2         appsim_request_duration_seconds
ZeroTraffic         no request for 5 minutes (missing data = breaching)    appsim_requests_total
SinkQueueBacklog    > 5,000 events queued for the sink, 5 minutes x 2      appsim_sink_queue_depth
SinkSpillBacklog    spilled batches waiting for replay for 15 minutes      appsim_spill_pending_batches
==================  =====================================================  ==========================

The sink thresholds are ours (the seed names no number): the event queue holds 10,000 by
default, so half full for ten minutes means the sink is falling behind before events are
dropped; spilled batches pending for fifteen minutes mean the sink has been refusing writes.

On AWS the CloudWatch agent scrapes ``/metrics`` (Prometheus scrape config) and publishes each
series under its Prometheus name in ``namespace`` with the dimensions given to ``apply``
(default ``service=appsim``). Two conventions that scrape config must follow (it is the one
place Prometheus labels become CloudWatch dimensions): the request counter is published once
rolled up without labels and once with a ``status_class`` dimension relabelled from
``status`` (``regex: "5.."``, ``replacement: "5xx"``), and the latency histogram as the raw
observations' distribution, so CloudWatch can take its p99.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_NAMESPACE = "appsim"
DEFAULT_DIMENSIONS = {"service": "appsim"}
ALARM_PREFIX = "appsim-"


@dataclass(frozen=True)
class CloudWatchMetric:
    id: str
    name: str
    statistic: str                      # Sum, Maximum, Average or a percentile such as p99
    dimensions: dict[str, str] = field(default_factory=dict)  # added to the deployment's dimensions


@dataclass(frozen=True)
class AlarmSpec:
    name: str
    description: str
    severity: Literal["critical", "warning"]
    comparison: Literal[">", "<"]
    threshold: float
    period_seconds: int
    evaluation_periods: int
    metrics: tuple[CloudWatchMetric, ...]
    prometheus: str                     # the PromQL condition over serving's series
    expression: str | None = None       # CloudWatch metric math over ``metrics``; None = the single metric
    missing_data: Literal["breaching", "notBreaching", "ignore", "missing"] = "notBreaching"

    @property
    def duration_seconds(self) -> int:
        return self.period_seconds * self.evaluation_periods


ALARMS: tuple[AlarmSpec, ...] = (
    AlarmSpec(
        name="HighErrorRate", severity="critical",
        description="5xx responses above 5% of requests for 10 minutes (seed 5.3: 5-minute periods, 2 of 2)",
        comparison=">", threshold=5.0, period_seconds=300, evaluation_periods=2,
        metrics=(CloudWatchMetric("errors", "appsim_requests_total", "Sum", {"status_class": "5xx"}),
                 CloudWatchMetric("requests", "appsim_requests_total", "Sum")),
        expression="100 * errors / requests",
        prometheus='100 * sum(rate(appsim_requests_total{status=~"5.."}[5m])) / sum(rate(appsim_requests_total[5m])) > 5',
    ),
    AlarmSpec(
        name="HighLatency", severity="critical",
        description="p99 request latency above 500 ms (seed 5.3: 10-minute periods, 2 of 2)",
        comparison=">", threshold=0.5, period_seconds=600, evaluation_periods=2,
        metrics=(CloudWatchMetric("latency", "appsim_request_duration_seconds", "p99"),),
        prometheus="histogram_quantile(0.99, sum by (le) (rate(appsim_request_duration_seconds_bucket[10m]))) > 0.5",
    ),
    AlarmSpec(
        name="ZeroTraffic", severity="critical",
        description="no request at all for 5 minutes (seed 5.2); no data counts as no traffic",
        comparison="<", threshold=1.0, period_seconds=300, evaluation_periods=1,
        metrics=(CloudWatchMetric("requests", "appsim_requests_total", "Sum"),),
        prometheus="sum(increase(appsim_requests_total[5m])) < 1 or absent(appsim_requests_total)",
        missing_data="breaching",
    ),
    AlarmSpec(
        name="SinkQueueBacklog", severity="warning",
        description="more than 5,000 feedback events waiting for the sink for 10 minutes (half the default queue)",
        comparison=">", threshold=5000.0, period_seconds=300, evaluation_periods=2,
        metrics=(CloudWatchMetric("depth", "appsim_sink_queue_depth", "Maximum"),),
        prometheus="max(appsim_sink_queue_depth) > 5000",
    ),
    AlarmSpec(
        name="SinkSpillBacklog", severity="warning",
        description="spilled feedback batches waiting for replay for 15 minutes: the sink refuses writes",
        comparison=">", threshold=0.0, period_seconds=300, evaluation_periods=3,
        metrics=(CloudWatchMetric("spilled", "appsim_spill_pending_batches", "Minimum"),),
        prometheus="min(appsim_spill_pending_batches) > 0",
    ),
)

_CW_COMPARISON = {">": "GreaterThanThreshold", "<": "LessThanThreshold"}
_STANDARD_STATISTICS = {"SampleCount", "Average", "Sum", "Minimum", "Maximum"}


def _metric_stat(metric: CloudWatchMetric, namespace: str, dimensions: dict[str, str]) -> dict[str, Any]:
    dims = {**dimensions, **metric.dimensions}
    return {"Namespace": namespace, "MetricName": metric.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(dims.items())]}


def cloudwatch_alarms(namespace: str = DEFAULT_NAMESPACE, dimensions: dict[str, str] | None = None,
                      actions: list[str] | None = None, prefix: str = ALARM_PREFIX) -> list[dict[str, Any]]:
    """``put_metric_alarm`` arguments for every alarm (pure: no AWS call)."""
    dims = DEFAULT_DIMENSIONS if dimensions is None else dimensions
    requests = []
    for alarm in ALARMS:
        request: dict[str, Any] = {
            "AlarmName": f"{prefix}{alarm.name}",
            "AlarmDescription": f"[{alarm.severity}] {alarm.description}. Prometheus: {alarm.prometheus}",
            "ComparisonOperator": _CW_COMPARISON[alarm.comparison],
            "Threshold": alarm.threshold,
            "EvaluationPeriods": alarm.evaluation_periods,
            "DatapointsToAlarm": alarm.evaluation_periods,
            "TreatMissingData": alarm.missing_data,
            "ActionsEnabled": bool(actions),
            "AlarmActions": list(actions or []),
            "OKActions": list(actions or []),
        }
        if alarm.expression is None:
            (metric,) = alarm.metrics
            request.update(_metric_stat(metric, namespace, dims), Period=alarm.period_seconds)
            statistic_key = "Statistic" if metric.statistic in _STANDARD_STATISTICS else "ExtendedStatistic"
            request[statistic_key] = metric.statistic
        else:
            request["Metrics"] = [
                {"Id": m.id, "ReturnData": False,
                 "MetricStat": {"Metric": _metric_stat(m, namespace, dims), "Period": alarm.period_seconds,
                                "Stat": m.statistic}}
                for m in alarm.metrics
            ] + [{"Id": "result", "Expression": alarm.expression, "Label": alarm.name, "ReturnData": True}]
        requests.append(request)
    return requests


def apply_alarms(client: Any, requests: list[dict[str, Any]]) -> list[str]:
    """Create or update every alarm (``put_metric_alarm`` is an upsert); returns their names."""
    for request in requests:
        client.put_metric_alarm(**request)
    return [r["AlarmName"] for r in requests]


def prometheus_rules() -> dict[str, Any]:
    """The same alarms as a Prometheus alerting-rules file (``groups:`` YAML structure)."""
    return {"groups": [{"name": "appsim", "rules": [
        {"alert": alarm.name, "expr": alarm.prometheus, "for": f"{alarm.duration_seconds // 60}m",
         "labels": {"severity": alarm.severity}, "annotations": {"summary": alarm.description}}
        for alarm in ALARMS
    ]}]}
