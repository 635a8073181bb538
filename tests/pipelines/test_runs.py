"""Run records: heartbeats, runs left by a dead process marked abandoned, records of a copied store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from models import storage
from pipelines import runs
from pipelines.runs import Heartbeat, RunRecord, StepRecord, list_runs, load_run, save_run


def _running(store: str, run_id: str, **where) -> RunRecord:
    record = RunRecord(run_id=run_id, started_at=runs.now(), parameters={}, store=store, registry="sqlite:///r.db",
                       steps=[StepRecord("PrepareFeedback", "succeeded"), StepRecord("TrainEmbeddings", "running"),
                              StepRecord("EvaluateCandidate")], **where)
    save_run(record)
    return record


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_whose_process_is_gone_is_marked_abandoned_and_saved(tmp_path):
    store = storage.normalize(tmp_path)
    record = _running(store, "20261101T000000Z-dead", host=runs.socket.gethostname(), pid=_dead_pid())
    with Heartbeat(record):  # a recent heartbeat does not hide a process that is gone
        pass
    [shown] = list_runs(store)
    assert shown.status == "abandoned" and shown.step("TrainEmbeddings").status == "abandoned"
    assert "is gone" in shown.step("TrainEmbeddings").error and shown.step("EvaluateCandidate").status == "pending"
    saved = json.loads((tmp_path / "runs" / record.run_id / "run.json").read_text())
    assert saved["status"] == "abandoned"


def test_a_live_run_is_left_running_and_a_silent_one_elsewhere_is_abandoned_when_stale(tmp_path, monkeypatch):
    store = storage.normalize(tmp_path)
    here = _running(store, "20261101T000000Z-live", host=runs.socket.gethostname(), pid=os.getpid())
    remote = _running(store, "20261101T000001Z-remote", host="another-machine", pid=1)
    with Heartbeat(here, every=0.01), Heartbeat(remote, every=0.01):
        pass
    assert {r.run_id: r.status for r in list_runs(store)} == {here.run_id: "running", remote.run_id: "running"}
    later = datetime.now(timezone.utc) + timedelta(seconds=runs.STALE_AFTER_SECONDS + 5)
    assert runs.abandoned_reason(load_run(store, here.run_id), at=later) is not None  # a stale beat wins over a pid
    monkeypatch.setattr(runs, "STALE_AFTER_SECONDS", -1.0)
    assert load_run(store, remote.run_id).status == "abandoned"
    assert "no heartbeat from another-machine" in load_run(store, remote.run_id).step("TrainEmbeddings").error


def test_a_record_from_before_heartbeats_counts_its_start_as_the_last_sign_of_life(tmp_path):
    store = storage.normalize(tmp_path)
    old = {"run_id": "20260101T000000Z-old", "started_at": "2026-01-01T00:00:00+00:00", "parameters": {},
           "store": store, "registry": "sqlite:///r.db", "status": "running",
           "steps": [{"name": "PrepareFeedback", "status": "running"}]}
    storage.write_json(storage.join(store, "runs", old["run_id"], "run.json"), old)
    shown = load_run(store, old["run_id"])
    assert shown.status == "abandoned" and shown.ended_at == "2026-01-01T00:00:00+00:00"


def test_records_of_a_copied_store_point_into_the_copy(tmp_path):
    old = storage.normalize(tmp_path / "old")
    record = RunRecord(run_id="20261101T000000Z-done", started_at=runs.now(), parameters={"catalog_uri": old + "/catalog/apps.parquet"},
                       store=old, registry="sqlite:///r.db", status="succeeded",
                       result={"evaluation_uri": old + "/runs/20261101T000000Z-done/evaluate/evaluation.json",
                               "note": old + "-not-a-child"})
    save_run(record)
    (tmp_path / "old").rename(tmp_path / "new")
    new = storage.normalize(tmp_path / "new")
    shown = load_run(new, record.run_id)
    assert shown.store == new and shown.parameters["catalog_uri"] == new + "/catalog/apps.parquet"
    assert shown.result == {"evaluation_uri": new + "/runs/20261101T000000Z-done/evaluate/evaluation.json",
                            "note": old + "-not-a-child"}


def test_fields_a_newer_version_adds_are_ignored(tmp_path):
    store = storage.normalize(tmp_path)
    newer = {"run_id": "20261101T000000Z-new", "started_at": "2026-11-01T00:00:00+00:00", "parameters": {},
             "store": store, "registry": "sqlite:///r.db", "status": "succeeded", "labels": {"team": "ua"},
             "steps": [{"name": "PrepareFeedback", "status": "succeeded", "attempts": 2}]}
    storage.write_json(storage.join(store, "runs", newer["run_id"], "run.json"), newer)
    [shown] = list_runs(store)
    assert shown.status == "succeeded" and shown.step("PrepareFeedback").status == "succeeded"
