"""The names of the Prometheus series serving exposes on ``/metrics``: the one definition.

``serving/metrics.py`` declares the series under these names; the alarms and dashboards
(``pipelines/monitoring.py``, and from it ``infra/appsim.yaml`` and ``infra/grafana/``) and the
staged rollout's guardrails (``pipelines/rollout.py``) read them from here. No dependencies, so
a reader does not load prometheus_client or the server to learn a name.

A counter ``NAME`` is exposed as the sample ``NAME_total`` and a histogram's buckets as
``NAME_bucket`` (Prometheus's conventions): ``total`` and ``bucket`` spell them.
"""

from __future__ import annotations

REQUESTS = "appsim_requests"                          # counter: endpoint, status, arm
REQUEST_DURATION = "appsim_request_duration_seconds"  # histogram: endpoint, arm
RATE_LIMITED = "appsim_rate_limited"                  # counter: limit
FEEDBACK_OUTCOMES = "appsim_feedback_outcomes"        # counter: event_type, outcome
FEEDBACK_REVENUE = "appsim_feedback_revenue"          # counter
MODEL_VERSION = "appsim_model_version"                # gauge: arm
MODEL_WEIGHT = "appsim_model_weight"                  # gauge: arm
MODEL_READY = "appsim_model_ready"                    # gauge
SINK_QUEUE_DEPTH = "appsim_sink_queue_depth"          # gauge
SPILL_PENDING_BATCHES = "appsim_spill_pending_batches"  # gauge
EVENT_LOGGING_STALLED = "appsim_event_logging_stalled"  # gauge


def total(counter: str) -> str:
    """The sample a counter is exposed as."""
    return f"{counter}_total"


def bucket(histogram: str) -> str:
    """The samples a histogram's buckets are exposed as."""
    return f"{histogram}_bucket"
