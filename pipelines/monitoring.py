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

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from models.experiments import CHALLENGER_ARM, CHAMPION_ARM
from serving import metric_names as names

DEFAULT_NAMESPACE = "appsim"
DEFAULT_DIMENSIONS = {"service": "appsim"}
ALARM_PREFIX = "appsim-"

# serving's series (serving/metric_names.py), as Prometheus and CloudWatch see them
_REQUESTS = names.total(names.REQUESTS)
_LATENCY = names.REQUEST_DURATION
_LATENCY_BUCKETS = names.bucket(names.REQUEST_DURATION)
_RATE_LIMITED = names.total(names.RATE_LIMITED)
_REVENUE = names.total(names.FEEDBACK_REVENUE)
_FEEDBACK_OUTCOMES = names.total(names.FEEDBACK_OUTCOMES)
_MODEL_VERSION = names.MODEL_VERSION
_MODEL_WEIGHT = names.MODEL_WEIGHT
_MODEL_READY = names.MODEL_READY
_SINK_QUEUE_DEPTH = names.SINK_QUEUE_DEPTH
_SPILL_PENDING = names.SPILL_PENDING_BATCHES


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


# Descriptions are what an on-call engineer reads in the alarm: the condition in plain words and the
# runbook section, never a reference to the design notes (HighErrorRate and HighLatency are the
# seed's section 5.3, ZeroTraffic its 5.2).
ALARMS: tuple[AlarmSpec, ...] = (
    AlarmSpec(
        name="HighErrorRate", severity="critical",
        description="5xx responses above 5% of requests for two 5-minute periods in a row (runbook, HighErrorRate)",
        comparison=">", threshold=5.0, period_seconds=300, evaluation_periods=2,
        metrics=(CloudWatchMetric("errors", _REQUESTS, "Sum", {"status_class": "5xx"}),
                 CloudWatchMetric("requests", _REQUESTS, "Sum")),
        expression="100 * errors / requests",
        prometheus=f'100 * sum(rate({_REQUESTS}{{status=~"5.."}}[5m])) / sum(rate({_REQUESTS}[5m])) > 5',
    ),
    AlarmSpec(
        name="HighLatency", severity="critical",
        description="p99 request latency above 500 ms for two 10-minute periods in a row (runbook, HighLatency)",
        comparison=">", threshold=0.5, period_seconds=600, evaluation_periods=2,
        metrics=(CloudWatchMetric("latency", _LATENCY, "p99"),),
        prometheus=f"histogram_quantile(0.99, sum by (le) (rate({_LATENCY_BUCKETS}[10m]))) > 0.5",
    ),
    AlarmSpec(
        name="ZeroTraffic", severity="critical",
        description="no request at all for 5 minutes, no data counting as no traffic (runbook, ZeroTraffic)",
        comparison="<", threshold=1.0, period_seconds=300, evaluation_periods=1,
        metrics=(CloudWatchMetric("requests", _REQUESTS, "Sum"),),
        prometheus=f"sum(increase({_REQUESTS}[5m])) < 1 or absent({_REQUESTS})",
        missing_data="breaching",
    ),
    AlarmSpec(
        name="SinkQueueBacklog", severity="warning",
        description="more than 5,000 feedback events waiting for the sink for 10 minutes, half the default queue (runbook, SinkQueueBacklog)",
        comparison=">", threshold=5000.0, period_seconds=300, evaluation_periods=2,
        metrics=(CloudWatchMetric("depth", _SINK_QUEUE_DEPTH, "Maximum"),),
        prometheus=f"max({_SINK_QUEUE_DEPTH}) > 5000",
    ),
    AlarmSpec(
        name="SinkSpillBacklog", severity="warning",
        description="spilled feedback batches waiting for replay for 15 minutes: the sink refuses writes (runbook, SinkSpillBacklog)",
        comparison=">", threshold=0.0, period_seconds=300, evaluation_periods=3,
        metrics=(CloudWatchMetric("spilled", _SPILL_PENDING, "Minimum"),),
        prometheus=f"min({_SPILL_PENDING}) > 0",
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


# --- dashboards ---------------------------------------------------------------------------------
# The seed's five panels (section 5.4), defined once over serving's series: rendered as a CloudWatch
# dashboard (`appsim monitoring apply`, infra/appsim.yaml) and as a Grafana dashboard over
# Prometheus (`appsim monitoring grafana`). The seed's cache hit rate, Redis connections, CTR and
# accuracy by arm and cost per 1M requests have no serving series: appsim has no cache or Redis
# (the index is in memory; the sink queue is the backlog to watch), CTR and CVR by arm come from
# the feedback (`appsim ab report`), and cost from Cost Explorer; text cells say so.
DASHBOARD_NAME = "appsim-similarity-service"
ChartKind = Literal["line", "stacked", "pie", "number", "heatmap", "text"]


@dataclass(frozen=True)
class Chart:
    title: str
    kind: ChartKind
    series: tuple[tuple[str, str], ...] = ()              # (legend, PromQL)
    metrics: tuple[CloudWatchMetric, ...] = ()            # CloudWatch inputs, ids usable in expressions
    expressions: tuple[tuple[str, str], ...] = ()         # (label, metric math); empty = plot the metrics
    unit: str = "short"                                   # Grafana unit
    period: int = 60
    text: str = ""                                        # kind "text": markdown


@dataclass(frozen=True)
class Panel:
    title: str
    charts: tuple[Chart, ...]


def _m(metric_id: str, name: str, statistic: str, **dimensions: str) -> CloudWatchMetric:
    return CloudWatchMetric(metric_id, name, statistic, dimensions)


_QUANTILE = f"histogram_quantile({{q}}, sum by (le{{by}}) (rate({_LATENCY_BUCKETS}{{sel}}[5m])))"
_ARMS = (CHAMPION_ARM, CHALLENGER_ARM)  # the arm label serving puts on its series

DASHBOARD: tuple[Panel, ...] = (
    Panel("Traffic", (
        Chart("Requests per second", "line", (("req/s", f"sum(rate({_REQUESTS}[1m]))"),),
              (_m("requests", _REQUESTS, "Sum"),), (("req/s", "requests / PERIOD(requests)"),),
              unit="reqps"),
        Chart("Error rate (%)", "stacked",
              (("4xx", f'100 * sum(rate({_REQUESTS}{{status=~"4.."}}[5m])) / sum(rate({_REQUESTS}[5m]))'),
               ("5xx", f'100 * sum(rate({_REQUESTS}{{status=~"5.."}}[5m])) / sum(rate({_REQUESTS}[5m]))')),
              (_m("e4", _REQUESTS, "Sum", status_class="4xx"),
               _m("e5", _REQUESTS, "Sum", status_class="5xx"),
               _m("all", _REQUESTS, "Sum")),
              (("4xx", "100 * e4 / all"), ("5xx", "100 * e5 / all")), unit="percent"),
        Chart("Rate-limited (429) per second", "line", (("429/s", f"sum(rate({_RATE_LIMITED}[1m]))"),),
              (_m("limited", _RATE_LIMITED, "Sum"),), (("429/s", "limited / PERIOD(limited)"),),
              unit="reqps"),
    )),
    Panel("Latency", (
        Chart("Latency p50 / p95 / p99", "line",
              tuple((f"p{int(q * 100)}", _QUANTILE.format(q=q, by="", sel="")) for q in (0.5, 0.95, 0.99)),
              tuple(_m(f"p{p}", _LATENCY, f"p{p}") for p in (50, 95, 99)), unit="s"),
        Chart("Latency distribution", "heatmap",
              (("{{le}}", f"sum by (le) (increase({_LATENCY_BUCKETS}[1m]))"),),
              tuple(_m(f"p{p.replace('.', '_')}", _LATENCY, f"p{p}")
                    for p in ("10", "25", "50", "75", "90", "99", "99.9")), unit="s"),
    )),
    Panel("Infrastructure", (
        Chart("CPU per worker (cores)", "line", (("{{instance}}", "rate(process_cpu_seconds_total[1m])"),),
              (_m("cpu", "process_cpu_seconds_total", "Sum"),), (("CPU cores", "cpu / PERIOD(cpu)"),), unit="short"),
        Chart("Resident memory per worker", "line", (("{{instance}}", "process_resident_memory_bytes"),),
              (_m("rss", "process_resident_memory_bytes", "Maximum"),), unit="bytes"),
        Chart("Workers with a model loaded", "number", (("ready", f"sum({_MODEL_READY})"),),
              (_m("ready", _MODEL_READY, "Minimum"),), unit="short"),
        Chart("Feedback backlog (sink queue, spilled batches)", "line",
              (("queued events", f"sum({_SINK_QUEUE_DEPTH})"), ("spilled batches", f"sum({_SPILL_PENDING})")),
              (_m("queued", _SINK_QUEUE_DEPTH, "Maximum"), _m("spilled", _SPILL_PENDING, "Maximum")),
              unit="short"),
    )),
    Panel("A/B testing", (
        Chart("Traffic split by arm", "pie",
              tuple((arm, f'sum(rate({_REQUESTS}{{arm="{arm}"}}[5m]))') for arm in _ARMS),
              tuple(_m(arm, _REQUESTS, "Sum", arm=arm) for arm in _ARMS), unit="reqps", period=300),
        Chart("p99 latency by arm", "line",
              tuple((arm, _QUANTILE.format(q=0.99, by="", sel=f'{{arm="{arm}"}}')) for arm in _ARMS),
              tuple(_m(arm, _LATENCY, "p99", arm=arm) for arm in _ARMS), unit="s", period=300),
        Chart("5xx rate by arm (%): the rollout guardrail", "line",
              tuple((arm, f'100 * sum(rate({_REQUESTS}{{arm="{arm}",status=~"5.."}}[5m])) / '
                          f'sum(rate({_REQUESTS}{{arm="{arm}"}}[5m]))') for arm in _ARMS),
              tuple(m for arm in _ARMS for m in (_m(f"{arm}_5xx", _REQUESTS, "Sum", arm=arm, status_class="5xx"),
                                                 _m(f"{arm}_all", _REQUESTS, "Sum", arm=arm))),
              tuple((arm, f"100 * {arm}_5xx / {arm}_all") for arm in _ARMS), unit="percent", period=300),
        Chart("Model version and weight by arm", "number",
              (("v {{arm}}", f"max by (arm) ({_MODEL_VERSION})"), ("weight {{arm}}", f"max by (arm) ({_MODEL_WEIGHT})")),
              tuple(m for arm in _ARMS for m in (_m(f"{arm}_version", _MODEL_VERSION, "Maximum", arm=arm),
                                                 _m(f"{arm}_weight", _MODEL_WEIGHT, "Maximum", arm=arm)))),
        Chart("CTR and CVR by arm", "text", text="Measured on the feedback, with posteriors and the decision: "
              "`appsim ab report` (report.html); the daily `appsim ab decide` acts on it and publishes each step."),
    )),
    Panel("Business", (
        Chart("Revenue per hour (reported conversions)", "line",
              (("revenue/h", f"sum(increase({_REVENUE}[1h]))"),),
              (_m("revenue", _REVENUE, "Sum"),), unit="currencyUSD", period=3600),
        Chart("Partner-reported CTR (%)", "line",
              (("CTR", f'100 * sum(rate({_FEEDBACK_OUTCOMES}{{event_type="click",outcome="positive"}}[1h])) / '
                       f'sum(rate({_FEEDBACK_OUTCOMES}{{event_type="click"}}[1h]))'),),
              (_m("clicked", _FEEDBACK_OUTCOMES, "Sum", event_type="click", outcome="positive"),
               _m("shown", _FEEDBACK_OUTCOMES, "Sum", event_type="click")),
              (("CTR", "100 * clicked / shown"),), unit="percent", period=3600),
        Chart("Requests per hour", "number", (("requests/h", f"sum(increase({_REQUESTS}[1h]))"),),
              (_m("hourly", _REQUESTS, "Sum"),), period=3600),
        Chart("Cost per 1M requests", "text", text="Cost Explorer (service cost, tag `service=appsim`) divided by "
              "`Requests per hour` x 24 x 30 / 1M; appsim exports no cost series."),
    )),
)

_CW_VIEW = {"line": ("timeSeries", False), "stacked": ("timeSeries", True), "pie": ("pie", False),
            "number": ("singleValue", False), "heatmap": ("timeSeries", False)}


def cloudwatch_dashboard(namespace: str = DEFAULT_NAMESPACE, dimensions: dict[str, str] | None = None,
                         region: str = "us-east-1") -> dict[str, Any]:
    """The five panels as a CloudWatch dashboard body (``put_dashboard``'s DashboardBody, parsed)."""
    dims = DEFAULT_DIMENSIONS if dimensions is None else dimensions
    widgets: list[dict[str, Any]] = []
    y = 0
    for panel in DASHBOARD:
        widgets.append({"type": "text", "x": 0, "y": y, "width": 24, "height": 1,
                        "properties": {"markdown": f"## {panel.title}"}})
        y += 1
        width = 24 // len(panel.charts)
        for column, chart in enumerate(panel.charts):
            position = {"x": column * width, "y": y, "width": width, "height": 6}
            if chart.kind == "text":
                widgets.append({"type": "text", **position, "properties": {"markdown": f"**{chart.title}**\n\n{chart.text}"}})
                continue
            view, stacked = _CW_VIEW[chart.kind]
            metrics: list[list[Any]] = []
            for metric in chart.metrics:
                stat = _metric_stat(metric, namespace, dims)
                row: list[Any] = [stat["Namespace"], stat["MetricName"]]
                for dimension in stat["Dimensions"]:
                    row += [dimension["Name"], dimension["Value"]]
                metrics.append([*row, {"id": metric.id, "stat": metric.statistic, "label": metric.id,
                                       "visible": not chart.expressions}])
            metrics += [[{"expression": expression, "label": label, "id": f"e{i}"}]
                        for i, (label, expression) in enumerate(chart.expressions)]
            widgets.append({"type": "metric", **position, "properties": {
                "title": chart.title, "view": view, "stacked": stacked, "region": region,
                "period": chart.period, "metrics": metrics}})
        y += 6
    return {"widgets": widgets}


def apply_dashboard(client: Any, body: dict[str, Any], name: str = DASHBOARD_NAME) -> str:
    """Create or replace the CloudWatch dashboard (``put_dashboard`` is an upsert); returns its name."""
    response = client.put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    problems = response.get("DashboardValidationMessages") or []
    if problems:
        raise ValueError(f"CloudWatch refused parts of dashboard {name}: {problems}")
    return name


_GRAFANA_TYPE = {"line": "timeseries", "stacked": "timeseries", "pie": "piechart", "number": "stat",
                 "heatmap": "heatmap", "text": "text"}


def grafana_dashboard(title: str = "appsim similarity service") -> dict[str, Any]:
    """The five panels as a Grafana dashboard (import it; pick the Prometheus data source that
    scrapes serving's /metrics)."""
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for panel in DASHBOARD:
        panels.append({"id": panel_id, "type": "row", "title": panel.title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        panel_id, y = panel_id + 1, y + 1
        width = 24 // len(panel.charts)
        for column, chart in enumerate(panel.charts):
            cell: dict[str, Any] = {"id": panel_id, "type": _GRAFANA_TYPE[chart.kind], "title": chart.title,
                                    "gridPos": {"x": column * width, "y": y, "w": width, "h": 8}}
            panel_id += 1
            if chart.kind == "text":
                cell["options"] = {"mode": "markdown", "content": chart.text}
                panels.append(cell)
                continue
            instant = chart.kind in ("pie", "number")
            cell["datasource"] = datasource
            cell["fieldConfig"] = {"defaults": {"unit": chart.unit}, "overrides": []}
            if chart.kind == "stacked":
                cell["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 40}
            cell["targets"] = [{"refId": chr(ord("A") + i), "datasource": datasource, "expr": expr,
                                "legendFormat": legend, "instant": instant, "range": not instant,
                                **({"format": "heatmap"} if chart.kind == "heatmap" else {})}
                               for i, (legend, expr) in enumerate(chart.series)]
            panels.append(cell)
        y += 8
    return {
        "title": title, "uid": "appsim-service", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-24h", "to": "now"}, "refresh": "1m", "tags": ["appsim"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


def promql_series(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (for checking them against what serving exports)."""
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    names = set(re.findall(r"\b[a-z_][a-z0-9_]*\b(?!\s*\()", without_labels))
    return {n for n in names if "_" in n and n not in _PROMQL_WORDS}


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
