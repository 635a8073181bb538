"""Prometheus metrics: request latency and counts per endpoint and arm, errors, models, swaps, the event queue.

Request metrics are recorded by a pure ASGI middleware (cheap: no per-request Request object);
model and sink figures are read from their owners when ``/metrics`` is scraped, so the hot
path never updates them. Each app has its own ``CollectorRegistry`` (several apps per process
in tests). With several uvicorn workers each process reports its own figures.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from serving.batcher import EventBatcher
    from serving.model_state import ModelManager

ARM_SCOPE_KEY = "appsim.arm"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("appsim_request_duration_seconds", "Request latency by endpoint and arm",
                                 ["endpoint", "arm"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # The arm label lets the staged rollout compare the challenger's error rate with the champion's.
        self.requests = Counter("appsim_requests", "Requests by endpoint, HTTP status and arm",
                                ["endpoint", "status", "arm"], registry=self.registry)
        self.rate_limited = Counter("appsim_rate_limited", "Requests answered 429", registry=self.registry)
        # The business panel of the dashboards: what partners report back through /v1/feedback.
        self.feedback = Counter("appsim_feedback_outcomes", "Accepted click/conversion events by type and outcome",
                                ["event_type", "outcome"], registry=self.registry)
        self.revenue = Counter("appsim_feedback_revenue", "Revenue reported by accepted conversion events",
                               registry=self.registry)
        # CPU and memory of this worker (the infrastructure panel); Linux /proc, absent elsewhere.
        ProcessCollector(registry=self.registry)

    def record_feedback(self, events: Iterable[Any]) -> None:
        for event in events:
            positive = event.clicked if event.event_type == "click" else event.converted
            self.feedback.labels(event.event_type, "positive" if positive else "negative").inc()
            if event.event_type == "conversion" and event.revenue:
                self.revenue.inc(event.revenue)

    def watch(self, manager: "ModelManager | None", batcher: "EventBatcher | None") -> None:
        self.registry.register(_StateCollector(manager, batcher))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, manager: "ModelManager | None", batcher: "EventBatcher | None"):
        self.manager = manager
        self.batcher = batcher

    def collect(self) -> Iterator[Any]:
        if self.manager is not None:
            state = self.manager.state
            versions = GaugeMetricFamily("appsim_model_version", "Model version served by each arm", labels=["arm"])
            weights = GaugeMetricFamily("appsim_model_weight", "Traffic share of each arm", labels=["arm"])
            for arm in state.arms if state else ():
                versions.add_metric([arm.name], arm.model.version)
                weights.add_metric([arm.name], arm.weight)
            yield versions
            yield weights
            yield GaugeMetricFamily("appsim_model_ready", "1 once a model is loaded", value=int(state is not None))
            yield CounterMetricFamily("appsim_model_swaps", "Hot swaps to a new serving state", value=self.manager.swaps)
            yield CounterMetricFamily("appsim_model_load_failures", "Model versions that failed to load",
                                      value=self.manager.load_failures)
            yield CounterMetricFamily("appsim_registry_poll_errors", "Registry polls that failed",
                                      value=self.manager.poll_errors)
            yield _held_back("appsim_model_refused", "1 per model version refused, by reason; tried again when "
                             "its file changes", self.manager.refused)
            yield _held_back("appsim_model_retrying", "1 per model version whose artifact is unavailable, "
                             "retried with backoff", self.manager.retrying)
        if self.batcher is not None:
            stats = self.batcher.stats
            yield GaugeMetricFamily("appsim_sink_queue_depth", "Events waiting for the sink", value=self.batcher.depth)
            yield GaugeMetricFamily("appsim_spill_pending_batches", "Spilled batches waiting for replay",
                                    value=len(self.batcher.spill.pending()))
            events = CounterMetricFamily("appsim_events", "Feedback events by outcome", labels=["outcome"])
            for outcome in ("submitted", "dropped", "written", "spilled", "replayed", "lost"):
                events.add_metric([outcome], getattr(stats, outcome))
            yield events
            yield CounterMetricFamily("appsim_sink_errors", "Sink writes that failed", value=stats.sink_errors)


def _held_back(name: str, documentation: str, versions: dict[int, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["version", "reason"])
    for number, entry in sorted(versions.items()):
        family.add_metric([str(number), entry.reason], 1)
    return family


class MetricsMiddleware:
    """Times every HTTP request; the endpoint label is the matched route's path template."""

    def __init__(self, app: Any, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            arm = scope.get(ARM_SCOPE_KEY, "none")
            self.metrics.latency.labels(endpoint, arm).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(status), arm).inc()
