"""Ordinary traffic retrains: a store whose feedback serving wrote itself (answers, cold starts,
partners' clicks and conversions) goes through `appsim retrain` with nothing quarantined, and a
truncated file among it is named in the manifest while the run goes on.

Before the one-boundary change, 120 cold-start calls among 1,120 requests failed the retrain
(``TooManyBadEvents: 120 of the 1,120 lines read are bad``) and one truncated .gz blocked every retrain.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from serving.app import create_app
from serving.settings import ServingSettings
from tests.integration.test_local_loop import appsim
from tests.serving.helpers import running_server, wait_for

SIMILAR_CALLS = 1000
COLD_START_CALLS = 120
BATCH = 500


def simulated_feedback(folder: Path) -> list[dict]:
    """The simulator's partner events (clicks, conversions); serving makes its own prediction events."""
    events = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as handle:
                events += [e for e in map(json.loads, handle) if e["event_type"] in ("click", "conversion")]
    return events


def retrain(store: Path, window_end: str) -> tuple[dict, dict]:
    proc = appsim("retrain", "--store", str(store), "--json", "--param", f"window_end={window_end}",
                  "--param", "window_days=9")
    summary = json.loads(proc.stdout)
    manifest = json.loads((store / "runs" / summary["run_id"] / "prepare" / "manifest.json").read_text())
    return summary, manifest


def test_server_written_traffic_retrains_with_nothing_quarantined_and_a_truncated_file_is_named(tmp_path):
    store = tmp_path / "store"
    # A first model to serve, trained on the simulator's feedback (its faults off: this store must hold only
    # what serving accepted). The simulator ends at the current hour, where serving will write.
    appsim("simulate", "--store", str(store), "--apps", "200", "--users", "600", "--days", "7",
           "--events-per-day", "1500", "--seed", "11", "--fault-rate", "0")
    first = json.loads(appsim("retrain", "--store", str(store), "--json").stdout)
    assert first["decision"] == "approved"
    partner_events = simulated_feedback(store / "feedback")
    shutil.rmtree(store / "feedback")  # from here on, every feedback line is one serving wrote

    app_ids = [f"app-{i:06d}" for i in range(200)]
    rng = random.Random(3)
    settings = ServingSettings(store=str(store), spill_dir=str(tmp_path / "spill"), flush_seconds=0.05,
                               poll_seconds=0.1)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        acknowledged = 0
        for start in range(0, len(partner_events), BATCH):
            answer = http.post("/v1/feedback", json={"events": partner_events[start:start + BATCH]})
            assert answer.status_code == 202, answer.text
            acknowledged += answer.json()["accepted"]
        for _ in range(SIMILAR_CALLS):
            answer = http.get(f"/v1/apps/{rng.choice(app_ids)}/similar",
                              params={"k": 10, "partner_id": rng.choice(["acme", "globex"])})
            assert answer.status_code == 200, answer.text
        for i in range(COLD_START_CALLS):
            answer = http.post("/v1/similar", json={"app": {"category": rng.choice(["games", "music"]),
                                                            "features": ["multiplayer"], "description": f"new {i}"}})
            assert answer.status_code == 200, answer.text
    # leaving the block stopped the server, which flushed its queue

    window_end = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z")
    second, manifest = retrain(store, window_end)
    counts = manifest["counts"]
    assert counts["quarantined"] == 0, counts["quarantine_reasons"]
    assert counts["lines_read"] == acknowledged + SIMILAR_CALLS + COLD_START_CALLS
    assert counts["kept_reasons"] == {"cold_start_query": COLD_START_CALLS}, counts
    assert second["decision"] in ("approved", "rejected")  # the gate decided: the run succeeded

    served = sorted(p for p in (store / "feedback").rglob("*.gz"))
    broken = served[0].with_name("zz-truncated.gz")
    data = served[0].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    _, manifest = retrain(store, window_end)
    assert manifest["counts"]["quarantine_reasons"] == {"unreadable_file": 1}, manifest["counts"]
    assert [Path(bad["uri"]).name for bad in manifest["inputs"]["bad_files"]] == [broken.name]
