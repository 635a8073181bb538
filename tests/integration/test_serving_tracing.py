"""Tracing: one request's spans (request -> routing -> search/prediction -> event logging) in an
in-memory exporter, a caller's traceparent continued; with tracing off nothing is installed."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from serving.settings import ServingSettings, SettingsError, settings_from_env
from serving.tracing import TracingMiddleware
from tests.serving.helpers import build_artifact, publish, running_server, wait_for

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    publish(SQLiteRegistry(store / "registry.db"), store, build_artifact())
    exporter = InMemorySpanExporter()
    settings = ServingSettings(store=str(store), spill_dir=str(store / "spill"), flush_seconds=0.05, poll_seconds=0.1)
    with running_server(create_app(settings, span_exporter=exporter)) as url, \
            httpx.Client(base_url=url, timeout=10) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        yield http, exporter


def spans_of_one_request(exporter: InMemorySpanExporter, path: str) -> dict:
    requests = [s for s in exporter.get_finished_spans() if s.name == "request" and s.attributes["url.path"] == path]
    assert len(requests) == 1
    trace_id = requests[0].context.trace_id
    return {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}


def test_a_similar_request_has_request_routing_search_and_event_logging_spans(traced):
    http, exporter = traced
    exporter.clear()
    assert http.get("/v1/apps/app-00003/similar", params={"k": 4}).status_code == 200
    spans = spans_of_one_request(exporter, "/v1/apps/app-00003/similar")
    assert set(spans) == {"request", "routing", "search", "event logging"}
    root = spans["request"]
    assert root.parent is None and root.attributes["http.response.status_code"] == 200
    for name in ("routing", "search", "event logging"):
        assert spans[name].parent.span_id == root.context.span_id
    assert spans["search"].attributes["k"] == 4
    assert root.start_time <= spans["routing"].start_time <= spans["search"].start_time \
        <= spans["event logging"].start_time <= root.end_time
    assert root.resource.attributes["service.name"] == "appsim-serving"


def test_a_predict_request_continues_the_callers_trace(traced):
    http, exporter = traced
    exporter.clear()
    answer = http.post("/v1/predict", json={"app_id": "app-00005", "k": 5},
                       headers={"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"})
    assert answer.status_code == 200
    spans = spans_of_one_request(exporter, "/v1/predict")
    assert set(spans) == {"request", "routing", "prediction", "event logging"}
    assert format(spans["request"].context.trace_id, "032x") == CALLER_TRACE
    assert spans["request"].parent.span_id == 0x00f067aa0ba902b7


def test_feedback_logging_is_a_span_and_a_404_is_recorded(traced):
    http, exporter = traced
    exporter.clear()
    event = {"event_type": "click", "app_id": "app-00001", "campaign_id": "c", "partner_id": "p", "user_id": "u",
             "clicked": True}
    assert http.post("/v1/feedback", json=event).status_code == 202
    assert set(spans_of_one_request(exporter, "/v1/feedback")) == {"request", "event logging"}
    assert http.get("/v1/apps/nope/similar").status_code == 404
    assert spans_of_one_request(exporter, "/v1/apps/nope/similar")["request"].attributes["http.response.status_code"] == 404


def test_tracing_is_off_by_default_and_the_endpoint_is_validated(tmp_path):
    app = create_app(ServingSettings(store=str(tmp_path)))
    assert not any(m.cls is TracingMiddleware for m in app.user_middleware)
    assert settings_from_env({"APPSIM_OTLP_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}).otlp_endpoint
    with pytest.raises(SettingsError, match="otlp_endpoint"):
        settings_from_env({"APPSIM_OTLP_ENDPOINT": "127.0.0.1:4318"})
