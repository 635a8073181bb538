"""One boundary, as a property: whatever the API answers with a 2xx is exactly what prepare accepts.

Random request bodies (valid, hostile and in between) go through every route that logs an event; then
everything serving logged goes through prepare (``steps.prepare.run`` on that store). Nothing that was
answered 2xx may be quarantined, and every acknowledged event is accounted for in the manifest's counts.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import layout
from models.events import MAX_ID_LENGTH, format_ts
from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from steps import prepare
from tests.integration.test_serving_api import HEADERS, settings_for
from tests.serving.helpers import app_id, build_artifact, catalog, publish, running_server, wait_for

APPS = 240
EXAMPLES = 150
NOW = datetime.now(timezone.utc)

surrogate = st.integers(0xD800, 0xDFFF).map(chr)
hostile_text = st.lists(st.one_of(st.characters(), surrogate), min_size=1, max_size=8).map("".join)
ids = st.one_of(
    st.sampled_from([app_id(i) for i in range(APPS)]),  # known apps: the requests that get answers
    st.text(max_size=12), hostile_text,
    st.text(alphabet="xyz", min_size=MAX_ID_LENGTH - 1, max_size=MAX_ID_LENGTH + 2),  # the length limit, both sides
)
anything = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True),
                     ids, st.lists(ids, max_size=3))
maybe = st.one_of(ids, anything)
timestamps = st.one_of(
    st.sampled_from([format_ts(NOW - timedelta(hours=1)), format_ts(NOW - timedelta(days=365 * 20)),
                     "2099-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2026-01-01T00:00:00", "yesterday"]),
    anything)


def escaped(text: str) -> str:
    """Percent-encoded UTF-8, lone surrogates included (their bytes, as a hostile client sends them)."""
    return quote(text, safe="", errors="surrogatepass")


def optional(**fields: st.SearchStrategy) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


metadata = optional(app_id=maybe, category=st.sampled_from(["games", "music", "finance"]),
                    features=st.lists(st.text(max_size=8), max_size=3), description=st.text(max_size=30),
                    avg_rating=st.one_of(st.floats(0, 5), anything))
feedback_event = st.fixed_dictionaries(
    {"event_type": st.sampled_from(["click", "conversion", "prediction", "view"])},
    optional={"event_id": maybe, "app_id": maybe, "campaign_id": maybe, "partner_id": maybe, "user_id": maybe,
              "clicked": anything, "converted": anything, "revenue": st.one_of(st.floats(0, 100), anything),
              "request_id": maybe, "ts": timestamps})
valid_click = st.builds(lambda app, user, ts: {"event_type": "click", "app_id": app, "campaign_id": "c",
                                               "user_id": user, "clicked": True, "ts": ts},
                        st.one_of(st.sampled_from([app_id(i) for i in range(APPS)]), st.just("not-in-the-catalog")),
                        st.text(st.characters(codec="utf-8"), min_size=1, max_size=10),
                        st.sampled_from([format_ts(NOW - timedelta(minutes=5)), format_ts(NOW - timedelta(days=2))]))

known = st.sampled_from([app_id(i) for i in range(APPS)])
# Known apps with ids of every kind: most are answered 2xx, so prepare gets plenty of acknowledged events, and the
# ones that must not be (too long, not Unicode) reach the handler that would log them.
mostly_valid = st.one_of(
    st.builds(lambda app, extra: ("POST", "/v1/predict", {"app_id": app} | extra), known, optional(partner_id=ids)),
    st.tuples(st.just("POST"), st.just("/v1/similar"),
              st.fixed_dictionaries({"app": optional(app_id=ids, category=st.sampled_from(["games", "music"]))},
                                    optional={"partner_id": ids})),
    st.tuples(st.just("GET"), known.map(lambda a: f"/v1/apps/{a}/similar"), optional(partner_id=ids)),
    st.tuples(st.just("POST"), st.just("/invocations"),
              st.builds(lambda app, extra: {"app_id": app} | extra, known, optional(partner_id=ids))),
    st.tuples(st.just("POST"), st.just("/v1/feedback"),
              st.fixed_dictionaries({"events": st.lists(valid_click, min_size=1, max_size=5)})),
)
hostile = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/predict"), optional(app_id=maybe, partner_id=maybe, k=anything, app=metadata)),
    st.tuples(st.just("POST"), st.just("/v1/similar"), optional(app=metadata, partner_id=maybe, k=anything)),
    st.tuples(st.just("GET"), ids.map(lambda a: f"/v1/apps/{escaped(a)}/similar"),
              optional(partner_id=ids, k=st.integers(-1, 60))),
    st.tuples(st.just("POST"), st.just("/invocations"),
              st.one_of(optional(app_id=maybe, partner_id=maybe, k=anything),
                        optional(instances=st.lists(st.one_of(ids, st.fixed_dictionaries({"app_id": maybe})), max_size=4),
                                 partner_id=maybe))),
    st.tuples(st.just("POST"), st.just("/v1/feedback"),
              st.one_of(feedback_event, st.fixed_dictionaries({"events": st.lists(
                  st.one_of(feedback_event, valid_click), min_size=1, max_size=4)}))),
)
requests = st.one_of(mostly_valid, hostile)


def logged_by(path: str, answer: httpx.Response) -> int:
    """How many events a 2xx answer says were logged."""
    body = answer.json()
    if path == "/v1/feedback":
        return len(body["event_ids"])
    if "predictions" in body:  # /invocations batch: unknown ids get an error entry and no event
        return sum("error" not in p for p in body["predictions"])
    return 1


@pytest.mark.timeout(300)
def test_nothing_answered_2xx_is_ever_quarantined_by_prepare(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact(n_apps=APPS))
    (tmp_path / "catalog").mkdir()
    catalog(APPS).to_parquet(tmp_path / "catalog" / "apps.parquet")
    acknowledged = 0
    statuses: dict[int, int] = {}
    with running_server(create_app(settings_for(tmp_path, flush_seconds=0.05))) as url:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
            @given(request=requests)
            def drive(request: tuple[str, str, dict]) -> None:
                nonlocal acknowledged
                method, path, body = request
                if method == "GET":
                    answer = http.get(path + "?" + "&".join(f"{k}={escaped(str(v))}" for k, v in body.items()))
                else:  # json.dumps escapes lone surrogates and writes NaN/Infinity as a hostile client would
                    answer = http.post(path, content=json.dumps(body).encode(),
                                       headers={"Content-Type": "application/json"})
                assert answer.status_code < 500, answer.text
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                if answer.status_code < 300:
                    acknowledged += logged_by(path, answer)

            drive()
    assert statuses.get(200, 0) >= 20 and statuses.get(202, 0) >= 10 and statuses.get(422, 0) >= 20, statuses

    store = str(tmp_path)
    manifest = prepare.run(layout.feedback_uri(store), layout.catalog_uri(store), str(tmp_path / "prepared"),
                           window_end=NOW + timedelta(hours=1), window_days=30, holdout_fraction=0.2,
                           max_bad_fraction=1.0)
    counts = manifest["counts"]
    # Every acknowledged event reached prepare, and each one has an outcome.
    assert counts["lines_read"] == acknowledged
    reasons = counts["quarantine_reasons"]
    assert set(reasons) <= {"unknown_app_id"}, reasons  # never a schema failure: the edge refused those with a 422
    if reasons:
        # Cold-start predictions (app_id "new:...") and feedback for apps not in the catalog are events prepare
        # must keep, counted but not trained on. Until prepare has that outcome it quarantines them; once it
        # has it, unknown_app_id no longer appears here and this line never runs.
        pytest.xfail(f"prepare still quarantines {reasons['unknown_app_id']} kept-not-trained events as unknown_app_id")
    assert counts["quarantined"] == 0, reasons
