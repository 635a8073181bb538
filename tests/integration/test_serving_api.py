"""Every endpoint of a real uvicorn server on 127.0.0.1: happy paths and errors."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from serving.settings import ServingSettings
from tests.serving.helpers import build_artifact, publish, read_feedback, running_server, wait_for
from tests.serving.test_routing import seed_pick_arm  # the seed's code, verbatim

KEY = "key-acme"
HEADERS = {"X-API-Key": KEY}
CATEGORY_COUNT = 8  # helpers.build_artifact: app i is in category i % 8


def settings_for(store: Path, **overrides) -> ServingSettings:
    values = dict(store=str(store), spill_dir=str(store / "spill"), flush_seconds=0.05, poll_seconds=0.1,
                  api_keys={KEY: "acme", "key-globex": "globex"}, rate_per_second=1000, rate_burst=1000)
    return ServingSettings(**(values | overrides))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    publish(SQLiteRegistry(store / "registry.db"), store, build_artifact())
    return store


@pytest.fixture(scope="module")
def client(store):
    with running_server(create_app(settings_for(store))) as url:
        with httpx.Client(base_url=url, timeout=10) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            yield http


def same_category(a: str, b: str) -> bool:
    return int(a.split("-")[1]) % CATEGORY_COUNT == int(b.split("-")[1]) % CATEGORY_COUNT


# --- SageMaker contract ---------------------------------------------------------------------
def test_ping_is_503_until_a_model_is_loaded(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    with running_server(create_app(settings_for(tmp_path))) as url, httpx.Client(base_url=url) as http:
        answer = http.get("/ping")
        assert answer.status_code == 503
        assert "no loadable Approved model version" in answer.json()["message"]
        publish(registry, tmp_path, build_artifact())
        wait_for(lambda: http.get("/ping").status_code == 200)
        assert http.get("/ping").json() == {"status": "ok", "versions": [1]}


def test_invocations_json_single_and_instances(client):
    one = client.post("/invocations", json={"app_id": "app-00003", "k": 4},
                      headers=HEADERS | {"X-Amzn-SageMaker-Custom-Attributes": "anything", "X-Unknown-Header": "ignored"})
    assert one.status_code == 200
    body = one.json()
    assert body["app_id"] == "app-00003" and len(body["neighbors"]) == 4
    assert {"request_id", "arm", "model_version"} <= set(body)
    many = client.post("/invocations", json={"instances": ["app-00001", {"app_id": "app-00002"}, "nope"], "k": 2},
                       headers=HEADERS)
    predictions = many.json()["predictions"]
    assert [p["app_id"] for p in predictions] == ["app-00001", "app-00002", "nope"]
    assert len(predictions[0]["neighbors"]) == 2 and predictions[2]["error"] == "unknown_app"


def test_invocations_honour_each_instance_k(client):
    instances = [{"app_id": "app-00001", "k": 3}, "app-00002", {"app_id": "app-00003", "k": 7}, {"app_id": "nope", "k": 2}]
    answer = client.post("/invocations", json={"instances": instances, "k": 5}, headers=HEADERS)
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert [len(p.get("neighbors", [])) for p in predictions] == [3, 5, 7, 0]
    assert predictions[3]["error"] == "unknown_app"
    alone = client.get("/v1/apps/app-00003/similar", params={"k": 7}, headers=HEADERS).json()
    assert predictions[2]["neighbors"] == alone["neighbors"]  # the same search as /v1 with that k
    bad = client.post("/invocations", json={"instances": ["app-00001", {"app_id": "app-00002", "k": 101}]},
                      headers=HEADERS)
    assert bad.status_code == 422
    assert bad.json()["field"] == "instances[1].k" and "from 1 to 100" in bad.json()["message"]


def test_invocations_csv(client):
    answer = client.post("/invocations", content=b"app-00005\napp-00006\n", headers=HEADERS | {"Content-Type": "text/csv"})
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert [p["app_id"] for p in predictions] == ["app-00005", "app-00006"]
    assert all(len(p["neighbors"]) == 10 for p in predictions)


def test_invocations_errors(client):
    assert client.post("/invocations", json={"app_id": "nope"}, headers=HEADERS).status_code == 404
    bad_k = client.post("/invocations", json={"app_id": "app-00001", "k": 101}, headers=HEADERS)
    assert bad_k.status_code == 422 and bad_k.json()["field"] == "k"
    assert client.post("/invocations", content=b"x", headers=HEADERS | {"Content-Type": "image/png"}).status_code == 415


def test_bodies_over_6_mb_get_413(client):
    big = b"app-00001\n" * 700_000  # 7 MB
    answer = client.post("/invocations", content=big, headers=HEADERS | {"Content-Type": "text/csv"})
    assert answer.status_code == 413 and answer.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: chunked transfer encoding
        for _ in range(7):
            yield b"app-00001\n" * 100_000

    chunked = client.post("/invocations", content=chunks(), headers=HEADERS | {"Content-Type": "text/csv"})
    assert chunked.status_code == 413


# --- /v1 API ------------------------------------------------------------------------------
def test_similar_apps(client):
    answer = client.get("/v1/apps/app-00009/similar", params={"k": 5}, headers=HEADERS)
    assert answer.status_code == 200
    body = answer.json()
    ids = [n["app_id"] for n in body["neighbors"]]
    assert len(ids) == 5 and "app-00009" not in ids
    assert all(same_category("app-00009", other) for other in ids)
    scores = [n["score"] for n in body["neighbors"]]
    assert scores == sorted(scores, reverse=True)
    assert body["arm"] == "champion" and body["model_version"] == 1 and len(body["request_id"]) == 32


@pytest.mark.parametrize("k", ["0", "101", "ten"])
def test_similar_k_out_of_range_is_422_naming_k(client, k):
    answer = client.get("/v1/apps/app-00001/similar", params={"k": k}, headers=HEADERS)
    assert answer.status_code == 422
    assert answer.json()["field"] == "k" and "1 to 100" in answer.json()["message"]


def test_unknown_app_is_404_with_the_way_out(client):
    answer = client.get("/v1/apps/no-such-app/similar", headers=HEADERS)
    assert answer.status_code == 404
    assert answer.json()["error"] == "unknown_app" and "POST /v1/similar" in answer.json()["message"]


def test_api_key_is_required_on_v1_and_invocations(client):
    missing = client.get("/v1/apps/app-00001/similar")
    assert missing.status_code == 401 and missing.json()["error"] == "missing_api_key"
    assert client.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
    # Outside SageMaker nothing guards /invocations but the key (it logs prediction events as /v1 does).
    assert client.post("/invocations", json={"app_id": "app-00001"}).json()["error"] == "missing_api_key"
    assert client.get("/ping").status_code == 200  # health checks need no key


def test_unknown_route_is_a_json_404(client):
    answer = client.get("/v2/nothing", headers=HEADERS)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_cold_start_similar_by_metadata(client):
    answer = client.post("/v1/similar", headers=HEADERS, json={
        "app": {"app_id": "brand-new", "category": "games", "description": "arcade racing levels",
                "features": ["games-tag"]}, "k": 8})
    assert answer.status_code == 200
    ids = [n["app_id"] for n in answer.json()["neighbors"]]
    assert answer.json()["app_id"] == "brand-new"
    assert sum(same_category("app-00000", other) for other in ids) >= 6  # games are apps 0, 8, 16...


def test_cold_start_errors(client):
    empty = client.post("/v1/similar", headers=HEADERS, json={"app": {}})
    assert empty.status_code == 422 and empty.json()["field"] == "app" and "at least one of" in empty.json()["message"]
    undecodable = client.post("/v1/similar", headers=HEADERS | {"Content-Type": "application/json"}, content=b"\xff")
    assert undecodable.status_code == 422 and undecodable.json()["error"] == "malformed_json"
    missing = client.post("/v1/similar", headers=HEADERS, json={"k": 3})
    assert missing.status_code == 422 and missing.json()["field"] == "app"
    rating = client.post("/v1/similar", headers=HEADERS, json={"app": {"category": "games", "avg_rating": 9}})
    assert rating.status_code == 422 and rating.json()["field"] == "app.avg_rating"


def test_predict_known_and_new_app(client):
    known = client.post("/v1/predict", headers=HEADERS, json={"app_id": "app-00004", "k": 5}).json()
    assert known["ctr"]["low"] <= known["ctr"]["estimate"] <= known["ctr"]["high"]
    assert known["cvr"]["low"] <= known["cvr"]["estimate"] <= known["cvr"]["high"]
    assert len(known["neighbors"]) == 5 and known["support_impressions"] > 0
    new = client.post("/v1/predict", headers=HEADERS, json={"app": {"category": "finance"}}).json()
    assert 0 < new["ctr"]["estimate"] < 1 and new["app_id"].startswith("new:")


@pytest.mark.parametrize("body, status, field", [
    ({"app_id": "nope"}, 404, "app_id"),
    ({}, 422, "app_id"),
    ({"app_id": "app-00001", "app": {"category": "games"}}, 422, "app_id"),
    ({"app_id": "app-00001", "k": 0}, 422, "k"),
])
def test_predict_errors(client, body, status, field):
    answer = client.post("/v1/predict", headers=HEADERS, json=body)
    assert answer.status_code == status and answer.json()["field"] == field


def test_feedback_accepts_valid_events(client):
    events = [
        {"event_id": "fb-1", "event_type": "click", "app_id": "app-00001", "campaign_id": "c1", "user_id": "u1",
         "clicked": True, "ts": "2026-01-31T12:00:00Z"},
        {"event_type": "conversion", "app_id": "app-00001", "campaign_id": "c1", "partner_id": "acme",
         "user_id": "u1", "converted": True, "revenue": 2.5},
    ]
    answer = client.post("/v1/feedback", headers=HEADERS, json={"events": events})
    assert answer.status_code == 202
    assert answer.json()["accepted"] == 2 and answer.json()["event_ids"][0] == "fb-1"
    single = client.post("/v1/feedback", headers=HEADERS, json=events[0] | {"event_id": "fb-2"})
    assert single.status_code == 202


@pytest.mark.parametrize("payload, field, text", [
    ({"event_type": "click", "app_id": "a", "campaign_id": "c", "clicked": True}, "events[0]", "user_id"),
    ({"events": [{"event_type": "click", "app_id": "a", "campaign_id": "c", "user_id": "u", "clicked": "maybe"}]},
     "events[0]", "clicked"),
    ({"event_type": "prediction"}, "events[0].event_type", "click, conversion"),
    ({"events": []}, "events", "non-empty"),
])
def test_feedback_rejects_invalid_events_naming_the_field(client, payload, field, text):
    answer = client.post("/v1/feedback", headers=HEADERS, json=payload)
    assert answer.status_code == 422
    assert answer.json()["field"] == field and text in answer.json()["message"]


def test_feedback_malformed_json(client):
    answer = client.post("/v1/feedback", headers=HEADERS | {"Content-Type": "application/json"}, content=b"{oops")
    assert answer.status_code == 422 and answer.json()["error"] == "malformed_json"


def test_models_lists_versions_arms_and_weights(client):
    body = client.get("/v1/models", headers=HEADERS).json()
    assert body["mode"] == "registry" and body["ready"]
    (arm,) = body["arms"]
    assert (arm["arm"], arm["weight"], arm["model_version"], arm["app_count"]) == ("champion", 1.0, 1, 240)
    assert len(arm["checksum"]) == 64


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/ping", "/invocations", "/v1/apps/{app_id}/similar", "/v1/similar", "/v1/predict", "/v1/feedback",
            "/v1/models"} <= set(spec["paths"])
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]


def test_docs_pages_and_every_asset_they_load_come_from_this_server(client):
    for page in ("/docs", "/redoc"):
        answer = client.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        html = answer.text
        assert re.findall(r"https?://[^\s'\"<>]*", html) == []  # nothing from a CDN or a font service
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(assets) >= 2, html  # the script and the icon (and Swagger UI's stylesheet)
        for asset in assets:
            assert asset.startswith("/"), asset
            fetched = client.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    swagger = client.get("/docs").text
    assert "'/openapi.json'" in swagger and '"validatorUrl": null' in swagger  # no online validator badge
    assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith(("text/javascript",
                                                                                              "application/javascript"))
    assert "/docs/assets" not in client.get("/openapi.json").json()["paths"]


def test_metrics(client):
    client.get("/v1/apps/app-00001/similar", headers=HEADERS)
    client.get("/v1/apps/nope/similar", headers=HEADERS)
    text = client.get("/metrics").text
    assert 'appsim_request_duration_seconds_bucket{arm="champion",endpoint="/v1/apps/{app_id}/similar"' in text
    assert 'appsim_requests_total{arm="champion",endpoint="/v1/apps/{app_id}/similar",status="404"}' in text
    assert 'appsim_model_version{arm="champion"} 1.0' in text
    for name in ("appsim_sink_queue_depth", 'appsim_events_total{outcome="dropped"}', "appsim_model_swaps_total",
                 "appsim_model_load_failures_total"):
        assert name in text


# --- rate limiting, A/B routing, event logging (servers of their own) --------------------------
def test_rate_limit_is_per_key_with_retry_after(tmp_path, store):
    with running_server(create_app(settings_for(store, rate_per_second=0.5, rate_burst=3, feedback_uri="none"))) as url:
        with httpx.Client(base_url=url) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            codes = [http.get("/v1/models", headers=HEADERS).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            limited = http.get("/v1/models", headers=HEADERS)
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
            assert http.get("/v1/models", headers={"X-API-Key": "key-globex"}).status_code == 200
            assert 'appsim_rate_limited_total{limit="rate_limited"} 2.0' in http.get("/metrics").text


def test_ab_arms_follow_the_seeds_pick_arm_and_every_answer_is_logged(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    publish(registry, tmp_path, build_artifact())
    challenger = publish(registry, tmp_path, build_artifact(seed=9, shift=0.5), status="PendingManualApproval")
    settings = settings_for(tmp_path, challenger_version=challenger, challenger_weight=0.4)
    answers = []
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, headers=HEADERS) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        assert http.get("/ping").json()["versions"] == [1, challenger]
        for partner in ("acme", "globex", "initech"):
            for i in range(0, 240, 7):
                app = f"app-{i:05d}"
                body = http.get(f"/v1/apps/{app}/similar", params={"partner_id": partner, "k": 3}).json()
                expected = {"v1": ("champion", 1), "v2": ("challenger", challenger)}[seed_pick_arm(partner, app, 0.6)]
                assert (body["arm"], body["model_version"]) == expected
                answers.append(body)
        predicted = http.post("/v1/predict", json={"app_id": "app-00002", "partner_id": "acme"}).json()
        answers.append(predicted)
    assert {a["arm"] for a in answers} == {"champion", "challenger"}
    # The server has stopped (lifespan shutdown flushed the batcher): every answer is in the sink.
    logged = {e["request_id"]: e for e in read_feedback(tmp_path / "feedback") if e["event_type"] == "prediction"}
    assert len(logged) == len(answers)
    for answer in answers:
        event = logged[answer["request_id"]]
        assert (event["arm"], event["model_version"], event["app_id"]) == (
            answer["arm"], answer["model_version"], answer["app_id"])
        assert event["neighbors"] == [n["app_id"] for n in answer["neighbors"]]
    assert logged[predicted["request_id"]]["predicted_ctr"] == pytest.approx(predicted["ctr"]["estimate"])


def test_every_series_the_dashboards_query_is_one_serving_exports(client):
    from prometheus_client.parser import text_string_to_metric_families

    from pipelines.monitoring import grafana_dashboard, promql_series

    def samples() -> dict[tuple, float]:
        families = list(text_string_to_metric_families(client.get("/metrics").text))
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        declared = {(f.name + suffix, ()): 0.0 for f in families for suffix in suffixes.get(f.type, ("",))}
        return declared | {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}

    before = samples()
    conversion = {"event_type": "conversion", "app_id": "app-00001", "campaign_id": "c-1", "partner_id": "acme",
                  "user_id": "u-1", "converted": True, "revenue": 2.5}
    assert client.post("/v1/feedback", headers=HEADERS, json={"events": [conversion]}).status_code == 202
    after = samples()
    exported = {name for name, _ in after}
    queried = {name for panel in grafana_dashboard()["panels"] for target in panel.get("targets", [])
               for name in promql_series(target["expr"])}
    assert len(queried) >= 10 and queried <= exported, queried - exported
    revenue = ("appsim_feedback_revenue_total", ())
    assert after[revenue] - before.get(revenue, 0.0) == 2.5
    positive = ("appsim_feedback_outcomes_total", (("event_type", "conversion"), ("outcome", "positive")))
    assert after[positive] - before.get(positive, 0.0) == 1
