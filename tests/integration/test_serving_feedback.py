"""Nothing is lost: SIGTERM with events queued, and a sink that goes down and comes back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from tests.integration.test_serving_api import HEADERS, settings_for
from tests.serving.helpers import build_artifact, free_port, publish, read_feedback, running_server, wait_for
from tests.serving.test_batcher import MemorySink

APPSIM = str(Path(sys.executable).with_name("appsim"))


def test_sigterm_flushes_every_queued_event(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    port = free_port()
    env = os.environ | {
        "APPSIM_FLUSH_SECONDS": "300", "APPSIM_BATCH_SIZE": "100000",  # events wait in the batcher until shutdown
        "APPSIM_SPILL_DIR": str(tmp_path / "spill"), "APPSIM_API_KEYS": "acme:key-acme",
    }
    env.pop("APPSIM_SERVING_SETTINGS", None)
    server = subprocess.Popen([APPSIM, "serve", "--store", str(tmp_path), "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=HEADERS, timeout=10) as http:
            def ready() -> bool:
                try:
                    return http.get("/ping").status_code == 200
                except httpx.TransportError:
                    assert server.poll() is None, server.stdout.read().decode()
                    return False
            wait_for(ready, timeout=60)
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
    finally:
        if server.poll() is None:
            server.kill()
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
