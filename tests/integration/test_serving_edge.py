"""One boundary: every request field that ends up in a logged event is checked with models/events.py's
types at the edge (a 422 naming the field and the reason), and every event serving writes parses."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from models.events import MAX_ID_LENGTH, parse_line
from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from tests.integration.test_serving_api import HEADERS, settings_for
from tests.serving.helpers import build_artifact, publish, running_server, wait_for

SURROGATE = "\ud800"
TOO_LONG = "p" * (MAX_ID_LENGTH + 1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    publish(SQLiteRegistry(store / "registry.db"), store, build_artifact())
    app = create_app(settings_for(store))
    with running_server(app) as url:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            yield http, app, store


def raw_json(value: object) -> bytes:
    # json.dumps escapes a lone surrogate as \ud800, exactly what a hostile client sends
    return json.dumps(value).encode()


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(path, content=raw_json(body), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path, body, field, reason", [
    ("/v1/predict", {"app_id": "app-00000", "partner_id": SURROGATE}, "partner_id", "lone UTF-16 surrogate"),
    ("/v1/predict", {"app_id": SURROGATE}, "app_id", "lone UTF-16 surrogate"),
    ("/v1/predict", {"app_id": "app-00000", "partner_id": TOO_LONG}, "partner_id", "at most 256 characters"),
    ("/v1/predict", {"app": {"app_id": TOO_LONG, "category": "games"}}, "app.app_id", "at most 256 characters"),
    ("/v1/predict", {"app_id": "app-00000", "partner_id": ""}, "partner_id", "at least 1 character"),
    ("/v1/similar", {"app": {"category": "games"}, "partner_id": SURROGATE}, "partner_id", "lone UTF-16 surrogate"),
    ("/v1/similar", {"app": {"app_id": SURROGATE, "category": "games"}}, "app.app_id", "lone UTF-16 surrogate"),
    ("/v1/similar", {"app": {"category": "games"}, "partner_id": TOO_LONG}, "partner_id", "at most 256 characters"),
    ("/invocations", {"app_id": "app-00000", "partner_id": TOO_LONG}, "partner_id", "at most 256 characters"),
    ("/invocations", {"app_id": TOO_LONG}, "app_id", "at most 256 characters"),
    ("/invocations", {"instances": ["app-00000", TOO_LONG]}, "instances[1]", "at most 256 characters"),
    # orjson refuses a lone surrogate while parsing: the body is not valid JSON text
    ("/invocations", {"app_id": "app-00000", "partner_id": SURROGATE}, "body", "surrogate"),
    ("/v1/feedback", {"event_type": "click", "app_id": "app-00001", "campaign_id": "c", "user_id": "u",
                      "clicked": True, "partner_id": SURROGATE}, "body", "surrogate"),
    ("/v1/feedback", {"event_type": "conversion", "app_id": "app-00001", "campaign_id": "c", "user_id": "u",
                      "converted": True, "revenue": "Infinity"}, "events[0]", "revenue"),
    ("/v1/feedback", {"event_type": "click", "app_id": "app-00001", "campaign_id": "c", "user_id": "u",
                      "clicked": True, "ts": "0001-01-01T00:00:00Z"}, "events[0]", "outside 2000-01-01..2099-12-31"),
    ("/v1/feedback", {"event_type": "click", "app_id": "app-00001", "campaign_id": "c", "user_id": TOO_LONG,
                      "clicked": True}, "events[0]", "user_id"),
])
def test_a_bad_id_is_a_422_naming_the_field_and_the_reason(served, path, body, field, reason):
    http, app, _ = served
    before = app.state.services.batcher.stats.submitted
    answer = post(http, path, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and reason in answer.json()["message"]
    assert app.state.services.batcher.stats.submitted == before  # nothing was logged


@pytest.mark.parametrize("query, field", [({"partner_id": TOO_LONG}, "partner_id"), ({"partner_id": ""}, "partner_id")])
def test_similar_query_fields_are_checked_too(served, query, field):
    http, _, _ = served
    answer = http.get("/v1/apps/app-00001/similar", params=query)
    assert answer.status_code == 422 and answer.json()["field"] == field


def test_an_over_long_app_id_in_the_path_is_a_422(served):
    http, _, _ = served
    answer = http.get(f"/v1/apps/{'a' * (MAX_ID_LENGTH + 1)}/similar")
    assert answer.status_code == 422 and answer.json()["field"] == "app_id"


def test_every_event_serving_writes_parses_with_the_event_schema(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    with running_server(create_app(settings_for(tmp_path))) as url:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            answers = [
                http.get("/v1/apps/app-00001/similar", params={"partner_id": "p" * MAX_ID_LENGTH}),
                http.post("/v1/similar", json={"app": {"category": "games", "features": ["arcade"]}}),  # new:<uuid>
                http.post("/v1/similar", json={"app": {"app_id": "brand-new-app", "category": "music"}, "k": 3}),
                http.post("/v1/predict", json={"app_id": "app-00002", "partner_id": "caf\u00e9 \U0001f600"}),
                http.post("/v1/predict", json={"app": {"category": "finance"}}),
                http.post("/invocations", json={"app_id": "app-00003", "k": 2}),
                http.post("/invocations", json={"instances": ["app-00004", "nope"]}),
                http.post("/invocations", content=b"app-00005\n", headers={"Content-Type": "text/csv"}),
                http.post("/v1/feedback", json={"events": [
                    {"event_type": "click", "app_id": "app-00001", "campaign_id": "c", "user_id": "u", "clicked": True},
                    {"event_type": "conversion", "app_id": "app-00001", "campaign_id": "c", "user_id": "u",
                     "converted": True, "revenue": 2.5, "ts": "2099-12-31T23:59:59Z"}]}),
            ]
            assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    lines = [line for path in sorted((tmp_path / "feedback").rglob("*.gz"))
             for line in gzip.decompress(path.read_bytes()).splitlines()]
    events = [parse_line(line) for line in lines]  # raises InvalidEvent on any line prepare would quarantine
    kinds = sorted(e.event_type for e in events)
    assert kinds == ["click", "conversion"] + ["prediction"] * 8
    assert any(e.event_type == "prediction" and e.app_id.startswith("new:") for e in events)
