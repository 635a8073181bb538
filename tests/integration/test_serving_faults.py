"""Fault tests of the logging path on a real server: a hostile request, a record that cannot be encoded,
kill -9 under feedback load, and spill files a killed replay left claimed."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from tests.integration.test_serving_api import settings_for
from tests.serving.helpers import appsim_serve, build_artifact, metric, publish, read_feedback, running_server, wait_for
from tests.serving.test_batcher import HangingSink

LOAD_SECONDS = 3.0  # of feedback load before the kill, at most
LOAD_EVENTS = 6000  # at most; the kill comes at half of it or after LOAD_SECONDS
BATCH = 25  # events per /v1/feedback request


def events_outcome(page: str, outcome: str) -> float:
    return metric(page, f'appsim_events_total{{outcome="{outcome}"}}')


def counts_hold(page: str) -> bool:
    """submitted = written + spilled + rejected (+ lost), once the queue is empty."""
    if metric(page, "appsim_sink_queue_depth"):
        return False
    return events_outcome(page, "submitted") == sum(
        events_outcome(page, o) for o in ("written", "spilled", "rejected", "lost"))


def clicks(n: int) -> list[dict]:
    return [{"event_id": uuid.uuid4().hex, "event_type": "click", "app_id": "app-00001", "campaign_id": "c",
             "partner_id": "acme", "user_id": f"u{i}", "clicked": True} for i in range(n)]


def stored_ids(store: Path) -> list[str]:
    return [e["event_id"] for e in read_feedback(store / "feedback")]


def test_after_the_lone_surrogate_request_logging_goes_on_and_counts_hold(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    with appsim_serve(tmp_path, {"APPSIM_SPILL_DIR": str(tmp_path / "spill"), "APPSIM_FLUSH_SECONDS": "0.1"}) as (_, url):
        with httpx.Client(base_url=url, timeout=10) as http:
            # The request from the issue, byte for byte: it once killed the batcher thread.
            hostile = http.post("/v1/predict", content=b'{"app_id": "app-000000", "partner_id": "\\ud800"}',
                                headers={"Content-Type": "application/json"})
            assert hostile.status_code == 422 and hostile.json()["field"] == "partner_id"
            assert "lone UTF-16 surrogate" in hostile.json()["message"]
            answered = [http.get(f"/v1/apps/app-{i:05d}/similar").json()["request_id"] for i in range(40)]
            feedback = http.post("/v1/feedback", json={"events": clicks(15)})
            assert feedback.status_code == 202
            wait_for(lambda: counts_hold(http.get("/metrics").text))
            page = http.get("/metrics").text
            assert events_outcome(page, "submitted") == 55 and events_outcome(page, "rejected") == 0
            assert metric(page, "appsim_event_logging_stalled") == 0 and http.get("/ping").status_code == 200
            wait_for(lambda: len(stored_ids(tmp_path)) == 55)
    events = read_feedback(tmp_path / "feedback")
    assert sorted(e["request_id"] for e in events if e["event_type"] == "prediction") == sorted(answered)
    assert sorted(e["event_id"] for e in events if e["event_type"] == "click") == sorted(feedback.json()["event_ids"])


def test_an_unencodable_record_below_the_edge_is_rejected_and_logging_goes_on(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    app = create_app(settings_for(tmp_path, flush_seconds=0.05))
    with running_server(app) as url, httpx.Client(base_url=url, headers={"X-API-Key": "key-acme"}) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        http.get("/v1/apps/app-00001/similar")
        # A record that skipped the edge (a future code path, a bug): serving's own record, with a lone surrogate.
        app.state.services.batcher.submit({"event_id": uuid.uuid4().hex, "event_type": "prediction",
                                           "partner_id": "\ud800"})
        after = [http.get(f"/v1/apps/app-{i:05d}/similar").json()["request_id"] for i in range(30)]
        wait_for(lambda: counts_hold(http.get("/metrics").text))
        page = http.get("/metrics").text
        assert events_outcome(page, "rejected") == 1 and events_outcome(page, "written") == 31
        assert metric(page, "appsim_event_batcher_loop_errors_total") == 0 and http.get("/ping").status_code == 200
    logged = {e["request_id"] for e in read_feedback(tmp_path / "feedback")}
    assert set(after) <= logged and len(logged) == 31


def feedback_load(url: str, stop: threading.Event, acknowledged: list[str], clients: int = 4) -> list[threading.Thread]:
    """``clients`` threads posting BATCH clicks a request until ``stop``, recording the ids answered 202."""
    budget = threading.Semaphore(LOAD_EVENTS // BATCH)

    def client() -> None:
        with httpx.Client(base_url=url, timeout=5) as http:
            while not stop.is_set() and budget.acquire(blocking=False):
                batch = clicks(BATCH)
                try:
                    answer = http.post("/v1/feedback", json={"events": batch})
                except httpx.TransportError:  # the server died mid-request: not acknowledged
                    return
                if answer.status_code == 202:
                    acknowledged.extend(answer.json()["event_ids"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_kill_9_under_feedback_load_loses_no_acknowledged_event(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    env = {"APPSIM_SPILL_DIR": str(tmp_path / "spill")}
    acknowledged: list[str] = []
    stop = threading.Event()
    with appsim_serve(tmp_path, env) as (server, url):
        threads = feedback_load(url, stop, acknowledged)
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline and len(acknowledged) < LOAD_EVENTS // 2:  # kill while the load still runs
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)  # mid-load: requests in flight, journal files not yet forwarded
        server.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert len(acknowledged) >= 200, "the load never got going"
    left = len(list((tmp_path / "spill").glob("spill-*"))) + len(list((tmp_path / "spill").glob(".claimed-*")))
    print(f"kill -9 after {len(acknowledged)} acknowledged events; {len(set(stored_ids(tmp_path)))} in the store, "
          f"{left} journal files left on disk")
    with appsim_serve(tmp_path, env) as (_, url):  # the restart replays the journal left on disk
        wait_for(lambda: set(acknowledged) <= set(stored_ids(tmp_path)), timeout=60)
        wait_for(lambda: metric(httpx.get(f"{url}/metrics").text, "appsim_spill_pending_batches") == 0)
    stored = stored_ids(tmp_path)
    missing = set(acknowledged) - set(stored)
    assert not missing and len(set(acknowledged)) == len(acknowledged)
    # Anything else in the store was written but not acknowledged before the kill (no 202 reached the client).
    assert len(set(stored)) >= len(acknowledged)


def test_claims_left_by_a_killed_replay_are_replayed_by_the_next_process(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    blocker = tmp_path / "unreachable"
    blocker.write_text("a file where the feedback folder should be: the sink refuses every write")
    spill = tmp_path / "spill"
    env = {"APPSIM_SPILL_DIR": str(spill)}
    with appsim_serve(tmp_path, env, "--feedback", str(blocker / "feedback")) as (server, url):
        answer = httpx.post(f"{url}/v1/feedback", json={"events": clicks(500)}, timeout=10)
        assert answer.status_code == 202  # on disk, although the sink is down
        page = httpx.get(f"{url}/metrics").text
        assert metric(page, "appsim_spill_pending_batches") == 1
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    # What a kill between claim and delete leaves: the journal file renamed to the dead replayer's claim.
    for path in spill.glob("spill-*.jsonl"):
        path.rename(path.with_name(f".claimed-{server.pid}-{path.name}"))
    assert len(list(spill.glob(".claimed-*"))) == 1 and not list(spill.glob("spill-*"))
    with appsim_serve(tmp_path, env) as (_, url):
        wait_for(lambda: sorted(stored_ids(tmp_path)) == sorted(answer.json()["event_ids"]), timeout=30)
        wait_for(lambda: metric(httpx.get(f"{url}/metrics").text, "appsim_spill_pending_batches") == 0)
    assert not [p for p in os.listdir(spill) if p.startswith((".claimed-", "spill-"))]


def test_a_hanging_sink_fails_ping_with_the_reason_until_it_comes_back(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    sink = HangingSink()
    with running_server(create_app(settings_for(tmp_path, flush_seconds=0.05, stall_seconds=0.5), sink=sink)) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": "key-acme"}) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            assert http.get("/v1/apps/app-00001/similar").status_code == 200  # its event's delivery hangs
            stuck = wait_for(lambda: (answer := http.get("/ping")).status_code == 503 and answer)
            assert stuck.json()["error"] == "event_logging_stalled" and "HangingSink" in stuck.json()["message"]
            assert metric(http.get("/metrics").text, "appsim_event_logging_stalled") == 1
            sink.release.set()
            wait_for(lambda: http.get("/ping").status_code == 200)
            assert metric(http.get("/metrics").text, "appsim_event_logging_stalled") == 0
    assert len(sink.events) == 1
