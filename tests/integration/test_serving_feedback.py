"""Nothing is lost: SIGTERM with events queued, and a sink that goes down and comes back."""

from __future__ import annotations

import signal

import httpx

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from tests.integration.test_serving_api import HEADERS, settings_for
from tests.serving.helpers import appsim_serve, build_artifact, publish, read_feedback, running_server, wait_for
from tests.serving.test_batcher import MemorySink


def test_sigterm_flushes_every_queued_event(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    env = {
        "APPSIM_FLUSH_SECONDS": "300", "APPSIM_BATCH_SIZE": "100000",  # events wait in the batcher until shutdown
        "APPSIM_SPILL_DIR": str(tmp_path / "spill"), "APPSIM_API_KEYS": "acme:key-acme",
    }
    with appsim_serve(tmp_path, env) as (server, url):
        with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as http:
            # Feedback is journaled (on disk before the 202) and forwarded to the store right away.
            accepted = http.post("/v1/feedback", json={"events": [
                {"event_type": "click", "app_id": "app-00001", "campaign_id": "c", "user_id": f"u{i}", "clicked": True}
                for i in range(20)]}).json()["event_ids"]
            wait_for(lambda: len(read_feedback(tmp_path / "feedback")) == 20)
            ids = [http.get(f"/v1/apps/app-{i:05d}/similar").json()["request_id"] for i in range(150)]
            assert "appsim_sink_queue_depth 150.0" in http.get("/metrics").text
        assert len(read_feedback(tmp_path / "feedback")) == 20  # the prediction events are still queued
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0].decode()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    events = read_feedback(tmp_path / "feedback")
    assert sorted(e["request_id"] for e in events if e["event_type"] == "prediction") == sorted(ids)
    assert sorted(e["event_id"] for e in events if e["event_type"] == "click") == sorted(accepted)
    assert '"logger":"appsim.serving"' in output.replace(" ", "")  # structured JSON logs


def test_sink_outage_spills_and_replays_without_loss(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    sink = MemorySink()
    sink.down = True
    settings = settings_for(tmp_path, flush_seconds=0.02, replay_seconds=0.05)
    with running_server(create_app(settings, sink=sink)) as url:
        with httpx.Client(base_url=url, headers=HEADERS) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            answers = [http.get(f"/v1/apps/app-{i:05d}/similar") for i in range(60)]
            assert {a.status_code for a in answers} == {200}  # the outage never reaches the client
            during = [a.json()["request_id"] for a in answers]
            wait_for(lambda: 'appsim_events_total{outcome="spilled"} 60.0' in http.get("/metrics").text)
            assert sink.events == [] and list((tmp_path / "spill").glob("spill-*"))
            sink.down = False  # the stream is back
            wait_for(lambda: len(sink.events) >= 60)
            after = [http.get(f"/v1/apps/app-{i:05d}/similar").json()["request_id"] for i in range(10)]
    delivered = [e["request_id"] for e in sink.events]
    assert sorted(delivered) == sorted(during + after)
    assert not list((tmp_path / "spill").glob("spill-*"))
