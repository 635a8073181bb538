"""Prometheus metrics: request latency and counts per endpoint and arm, errors, models, swaps, the event queue.

Request metrics are recorded by a pure ASGI middleware (cheap: no per-request Request object);
model and sink figures are read from their owners when ``/metrics`` is scraped, so the hot
path never updates them. Each app has its own ``CollectorRegistry`` (several apps per process
in tests).

Several workers are one server: with ``PROMETHEUS_MULTIPROC_DIR`` set (``appsim serve --workers
N`` prepares a fresh one) every worker writes its figures to memory-mapped files there, and a
scrape, whichever worker answers it, merges every worker's files. Request figures go there as
they happen; the owners' figures are mirrored into it by every worker each
``MIRROR_SECONDS`` (and by the scraping worker just before it answers): counters add what
changed, gauges merge across workers by ``GAUGE_MODES``. A worker that exits removes its live
gauges; those of a worker that was killed (uvicorn kills one that stops answering its health
check) are removed by the next scrape.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest, multiprocess, values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from models.processes import pid_alive
from serving import metric_names as names

if TYPE_CHECKING:
    from serving.batcher import EventBatcher
    from serving.model_state import ModelManager
    from serving.security import RateLimiter

ARM_SCOPE_KEY = "appsim.arm"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
MIRROR_SECONDS = 1.0
# How a gauge of the owners' figures merges over workers (prometheus_client's multiprocess_mode;
# "live" modes forget workers that exited). Not listed: livesum (per-worker amounts add up).
GAUGE_MODES = {
    names.MODEL_VERSION: "liveall",  # per worker (a pid label): during a hot swap workers differ briefly
    names.MODEL_WEIGHT: "liveall",
    names.MODEL_READY: "livemin",  # 1 only when every worker has a model
    names.SPILL_PENDING_BATCHES: "livemax",  # one spill folder, seen by every worker
    names.EVENT_LOGGING_STALLED: "livemax",  # 1 when any worker is stuck
}


def multiprocess_mode() -> bool:
    """Whether this process's metric values live in ``PROMETHEUS_MULTIPROC_DIR`` (decided when
    prometheus_client was imported, so the variable must be set before the worker starts)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def prepare_multiprocess_dir(path: str) -> str:
    """Make ``path`` an empty metrics folder: files left by an earlier server would be merged
    into this one's figures."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return str(folder)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_mode()
        self.latency = Histogram(names.REQUEST_DURATION, "Request latency by endpoint and arm",
                                 ["endpoint", "arm"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # The arm label lets the staged rollout compare the challenger's error rate with the champion's.
        self.requests = Counter(names.REQUESTS, "Requests by endpoint, HTTP status and arm",
                                ["endpoint", "status", "arm"], registry=self.registry)
        self.rate_limited = Counter(names.RATE_LIMITED, "Requests answered 429, by the limit that was reached",
                                    ["limit"], registry=self.registry)
        # The business panel of the dashboards: what partners report back through /v1/feedback.
        self.feedback = Counter(names.FEEDBACK_OUTCOMES, "Accepted click/conversion events by type and outcome",
                                ["event_type", "outcome"], registry=self.registry)
        self.revenue = Counter(names.FEEDBACK_REVENUE, "Revenue reported by accepted conversion events",
                               registry=self.registry)
        # CPU and memory of this worker (the infrastructure panel); Linux /proc, absent elsewhere. With
        # several workers it is mirrored like the owners' figures (summed over the workers).
        self._process = ProcessCollector(registry=None if self.multiprocess else self.registry)
        self._mirror: _Mirror | None = None

    def record_feedback(self, events: Iterable[Any]) -> None:
        for event in events:
            positive = event.clicked if event.event_type == "click" else event.converted
            self.feedback.labels(event.event_type, "positive" if positive else "negative").inc()
            if event.event_type == "conversion" and event.revenue:
                self.revenue.inc(event.revenue)

    def watch(self, manager: "ModelManager | None", batcher: "EventBatcher | None",
              limiter: "RateLimiter | None" = None) -> None:
        """Report the owners' figures: read at scrape time, or mirrored into the shared files."""
        collectors: list[Collector] = [_StateCollector(manager, batcher)]
        if self.multiprocess:
            collectors.append(self._process)
        if limiter is not None:
            collectors.append(_LimiterCollector(limiter))
        for collector in collectors:
            if self.multiprocess:
                self._mirror = self._mirror or _Mirror()
                self._mirror.sources.append(collector)
            else:
                self.registry.register(collector)

    def mirror(self) -> None:
        if self._mirror is not None:
            self._mirror.sync()

    async def mirror_forever(self) -> None:
        """Every worker's loop in multiprocess mode, so that any worker's scrape sees its figures."""
        while True:
            self.mirror()
            await asyncio.sleep(MIRROR_SECONDS)

    def close(self) -> None:
        """A worker's last step: its live gauges leave the merged figures."""
        if self.multiprocess:
            with suppress(OSError):
                multiprocess.mark_process_dead(os.getpid())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.mirror()
        forget_dead_workers(os.environ[MULTIPROCESS_DIR_ENV])
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)


def forget_dead_workers(folder: str) -> None:
    """Remove the live gauges of workers that are gone (the folder is the host's own, so pids are this host's)."""
    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        if not pid_alive(pid):
            with suppress(OSError):
                multiprocess.mark_process_dead(pid, folder)


class _Mirror:
    """Copies collectors' figures into multiprocess metrics: counters by their increase since the
    last copy, gauges by value (a sample that disappeared, such as a removed arm, reads 0)."""

    def __init__(self) -> None:
        self.sources: list[Collector] = []
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._gauge_samples: dict[str, set[tuple[str, ...]]] = {}

    def sync(self) -> None:
        for source in self.sources:
            for family in source.collect():
                if family.type == "counter":
                    self._copy_counter(family)
                elif family.type == "gauge":
                    self._copy_gauge(family)

    def _copy_counter(self, family: Any) -> None:
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            names = tuple(sorted(sample.labels))
            counter = self._counters.get(family.name)
            if counter is None:
                counter = self._counters[family.name] = Counter(family.name, family.documentation, names, registry=None)
            labels = tuple(sample.labels[n] for n in names)
            increase = sample.value - self._last.get((family.name, labels), 0.0)
            if increase > 0:  # a counter of the owner never goes down; a replaced owner starts again from 0
                (counter.labels(*labels) if names else counter).inc(increase)
            self._last[(family.name, labels)] = sample.value

    def _copy_gauge(self, family: Any) -> None:
        names = tuple(sorted(family.samples[0].labels)) if family.samples else ()
        gauge = self._gauges.get(family.name)
        if gauge is None:
            if not family.samples:
                return
            gauge = self._gauges[family.name] = Gauge(family.name, family.documentation, names, registry=None,
                                                      multiprocess_mode=GAUGE_MODES.get(family.name, "livesum"))
        seen = set()
        for sample in family.samples:
            labels = tuple(sample.labels[n] for n in names)
            seen.add(labels)
            (gauge.labels(*labels) if names else gauge).set(sample.value)
        for gone in self._gauge_samples.get(family.name, set()) - seen:
            gauge.labels(*gone).set(0)
        self._gauge_samples[family.name] = seen


class _StateCollector(Collector):
    def __init__(self, manager: "ModelManager | None", batcher: "EventBatcher | None"):
        self.manager = manager
        self.batcher = batcher

    def collect(self) -> Iterator[Any]:
        if self.manager is not None:
            state = self.manager.state
            versions = GaugeMetricFamily(names.MODEL_VERSION, "Model version served by each arm", labels=["arm"])
            weights = GaugeMetricFamily(names.MODEL_WEIGHT, "Traffic share of each arm", labels=["arm"])
            for arm in state.arms if state else ():
                versions.add_metric([arm.name], arm.model.version)
                weights.add_metric([arm.name], arm.weight)
            yield versions
            yield weights
            yield GaugeMetricFamily(names.MODEL_READY, "1 once a model is loaded", value=int(state is not None))
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
            yield GaugeMetricFamily(names.SINK_QUEUE_DEPTH, "Events waiting for the sink", value=self.batcher.depth)
            yield GaugeMetricFamily(names.SPILL_PENDING_BATCHES,
                                    "Files of events on local disk waiting for the sink (journal and spill, "
                                    "including files being replayed or left claimed by a dead process)",
                                    value=self.batcher.spill.backlog())
            # submitted = written + spilled + rejected + lost + queue depth (lost only when the local disk fails)
            events = CounterMetricFamily("appsim_events", "Events by outcome", labels=["outcome"])
            for outcome in ("submitted", "written", "spilled", "rejected", "lost", "dropped", "replayed"):
                events.add_metric([outcome], getattr(stats, outcome))
            yield events
            yield CounterMetricFamily("appsim_sink_errors", "Sink writes that failed", value=stats.sink_errors)
            yield CounterMetricFamily("appsim_feedback_journal_commits",
                                      "Group commits (write + fsync) of the feedback journal", value=stats.journal_commits)
            yield CounterMetricFamily("appsim_event_batcher_loop_errors",
                                      "Unexpected errors in the event batcher (counted; the loop goes on)",
                                      value=stats.loop_errors)
            yield CounterMetricFamily("appsim_spill_quarantined_files", "Spill files that could not be read back",
                                      value=stats.quarantined_files)
            yield GaugeMetricFamily(names.EVENT_LOGGING_STALLED,
                                    "1 while the watchdog sees event logging stuck (/ping answers 503)",
                                    value=int(self.batcher.stall_reason() is not None))


def _held_back(name: str, documentation: str, versions: dict[int, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["version", "reason"])
    for number, entry in sorted(versions.items()):
        family.add_metric([str(number), entry.reason], 1)
    return family


class _LimiterCollector(Collector):
    def __init__(self, limiter: "RateLimiter"):
        self.limiter = limiter

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily("appsim_rate_limit_store_errors",
                                  "Shared rate-limit store failures (limits then fall back to per-worker buckets)",
                                  value=self.limiter.store_errors)


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
