"""The whole retraining loop on the embedded default, run as a user runs it: the `appsim` CLI
in subprocesses, on a store the simulator wrote."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.artifact import ModelArtifact
from models.dataset import KEPT, QUARANTINE
from pipelines.simulators.marketplace import FAULT_REASON

END = "2026-11-02T00:00:00Z"
DAYS = 14
SIM = ["--apps", "400", "--users", "1200", "--days", str(DAYS), "--events-per-day", "4000", "--seed", "7", "--end", END]


def appsim(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("APPSIM_STORE", None)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2], timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"appsim {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def retrain(store: Path, *params: str) -> tuple[subprocess.CompletedProcess, dict]:
    args = ["retrain", "--store", str(store), "--json", "--param", f"window_end={END}", "--param", f"window_days={DAYS}"]
    for p in params:
        args += ["--param", p]
    proc = appsim(*args)
    return proc, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    appsim("simulate", "--store", str(store), *SIM, "--fault-rate", "0.02")
    first_proc, first = retrain(store)
    second_proc, second = retrain(store)
    return store, first, second, first_proc, second_proc


def test_first_retrain_approves_version_1_over_the_popularity_baseline(loop):
    store, first, *_ = loop
    assert first["decision"] == "approved" and first["version"] == 1
    assert first["metrics"]["champion"] is None
    candidate = first["metrics"]["candidate"]["recall_at_10"]
    baseline = first["metrics"]["baseline"]["recall_at_10"]
    # "far above the popularity baseline"
    assert candidate > 2 * baseline, (candidate, baseline)
    listed = json.loads(appsim("registry", "list", "--json", "--store", str(store)).stdout)
    assert [(v["version"], v["status"]) for v in listed] == [(2, "Rejected"), (1, "Approved")]
    assert listed[1]["metrics"]["recall_at_10"] == pytest.approx(candidate)
    assert listed[1]["artifact_uri"].endswith("model.tar.gz") and listed[1]["created_at"]


def test_second_retrain_records_version_2_and_decides_by_the_gate(loop):
    _, first, second, _, second_proc = loop
    assert second_proc.returncode == 0
    assert second["version"] == 2
    assert second["metrics"]["champion"]["recall_at_10"] == pytest.approx(first["metrics"]["candidate"]["recall_at_10"])
    # Same data and seed: the candidate equals the champion, so it cannot pass a 3% gate.
    assert second["decision"] == "rejected"
    assert second["comparison"]["against"] == "champion"


def test_human_summary_says_why_and_the_gate_is_announced(loop, aws_server_env, monkeypatch):
    from tests.models.sns_inbox import topic_with_inbox

    store, *_ = loop
    topic, received = topic_with_inbox("appsim-gate")
    monkeypatch.setenv("APPSIM_SNS_TOPIC_ARN", topic)
    proc = appsim("retrain", "--store", str(store), "--param", f"window_end={END}", "--param", f"window_days={DAYS}")
    assert "decision: rejected" in proc.stdout and "why:" in proc.stdout and "recall@10" in proc.stdout
    assert "[PrepareFeedback] succeeded" in proc.stderr and "[RegisterRejected] succeeded" in proc.stderr
    (gate,) = received()
    assert gate["kind"] == "gate" and gate["numbers"]["decision"] == "rejected" and gate["numbers"]["version"] == 3
    assert gate["numbers"]["comparison"]["against"] == "champion" and "recall@10" in gate["summary"]


def test_same_data_and_seed_give_byte_identical_embeddings(loop):
    store, first, second, *_ = loop
    runs = json.loads(appsim("runs", "list", "--json", "--store", str(store)).stdout)
    by_id = {r["run_id"]: r for r in runs}
    sha = [
        next(s for s in by_id[r["run_id"]]["steps"] if s["name"] == "TrainEmbeddings")["outputs"]["embeddings_sha256"]
        for r in (first, second)
    ]
    assert sha[0] == sha[1]


def test_embeddings_agree_with_ground_truth_neighbours(loop):
    store, first, *_ = loop
    artifact = ModelArtifact.load_uri(f"file://{store}/runs/{first['run_id']}/train/model.tar.gz")
    truth = pd.read_parquet(store / "ground_truth" / "neighbors.parquet")
    truth = truth[truth["rank"] <= 10].groupby("app_id")["neighbor_id"].apply(set)
    _, found = artifact.index.search(artifact.embeddings, 11)
    overlaps = []
    for row, app_id in enumerate(artifact.app_ids):
        predicted = {artifact.app_ids[j] for j in found[row] if j >= 0 and j != row}
        overlaps.append(len(predicted & truth[app_id]) / 10)
    chance = 10 / len(artifact.app_ids)
    assert np.mean(overlaps) > 10 * chance, np.mean(overlaps)


def test_every_injected_fault_is_quarantined_or_kept_with_its_reason(loop):
    store, first, *_ = loop
    prepared = store / "runs" / first["run_id"] / "prepare"
    manifest = json.loads((prepared / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["lines_read"] == (counts["good"] + counts["quarantined"] + counts["duplicates"] + counts["out_of_window"]
                                    + counts["kept"])
    records = {}
    for name, count in ((QUARANTINE, counts["quarantined"]), (KEPT, counts["kept"])):
        with gzip.open(prepared / name, "rt") as handle:
            written = [json.loads(line) for line in handle]
        assert len(written) == count > 0 and all(r["reason"] for r in written)
        records |= {(Path(r["source"]).name, r["line"]): r["reason"] for r in written}
    faults = pd.read_parquet(store / "ground_truth" / "faults.parquet")
    expected = {kind: reason for kind, reason in FAULT_REASON.items() if reason}
    checked = 0
    for fault in faults.itertuples():
        if fault.kind in expected:
            key = (Path(fault.file).name, fault.line)
            if key in records:  # faults outside the window were never read
                assert records[key] == expected[fault.kind], fault
                checked += 1
    assert checked >= 0.9 * faults["kind"].isin(list(expected)).sum()


def test_simulate_then_retrain_with_defaults_completes(tmp_path):
    store = tmp_path / "defaults"
    appsim("simulate", "--store", str(store), "--apps", "60", "--users", "200", "--events-per-day", "150")
    proc = appsim("retrain", "--store", str(store), "--json")  # window_end = now: the simulated data is the window's end
    summary = json.loads(proc.stdout)
    assert summary["decision"] == "approved" and summary["version"] == 1


def test_too_many_bad_events_fail_prepare_loudly(tmp_path):
    store = tmp_path / "bad"
    appsim("simulate", "--store", str(store), "--apps", "100", "--users", "200", "--days", "3", "--events-per-day",
           "1000", "--seed", "3", "--end", END, "--fault-rate", "0.3")
    proc = appsim("retrain", "--store", str(store), "--param", f"window_end={END}", "--param", "window_days=3",
                  "--param", "max_bad_fraction=0.05", check=False)
    assert proc.returncode == 1
    assert "PrepareFeedback failed" in proc.stderr and "0.05" in proc.stderr
    runs = json.loads(appsim("runs", "list", "--json", "--store", str(store)).stdout)
    assert runs[0]["status"] == "failed"
    assert [s["status"] for s in runs[0]["steps"]][:2] == ["failed", "pending"]
    prepared = store / "runs" / runs[0]["run_id"] / "prepare"
    assert not (prepared / "train_interactions.parquet").exists()
    assert json.loads((prepared / "manifest.json").read_text())["status"] == "failed"
    assert json.loads(appsim("registry", "list", "--json", "--store", str(store)).stdout) == []
