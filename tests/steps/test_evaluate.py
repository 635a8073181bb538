import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.compare import METRIC_KEYS
from models import storage
from models.registry import ModelVersion
from models.registry_sqlite import SQLiteRegistry
from steps import evaluate
from tests.evaluation import builders

REPO = Path(__file__).resolve().parents[2]
REPORT_KEYS = {
    "candidate", "champion", "baseline", "comparison", "threshold", "improved", "decision", "decision_reason",
    "champion_version", "holdout", "similarity_metrics", "training_selection",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A prepared folder plus three models: one that knows the clusters, one that does not, and one
    that knows the clusters but only half of the apps."""
    root = tmp_path_factory.mktemp("store")
    ids = builders.app_ids()
    builders.write_prepared(str(root / "prepared"), ids)
    builders.make_artifact(ids, builders.clustered_embeddings(ids)).save_tarball(str(root / "clustered" / "model.tar.gz"))
    builders.make_artifact(ids, builders.random_embeddings(ids)).save_tarball(str(root / "random" / "model.tar.gz"))
    half = [a for a in ids if int(a.rsplit("-", 1)[1]) < builders.APPS_PER_CLUSTER // 2]
    builders.make_artifact(half, builders.clustered_embeddings(half)).save_tarball(str(root / "half" / "model.tar.gz"))
    return root


def model(store: Path, name: str) -> str:
    return storage.normalize(str(store / name / "model.tar.gz"))


def champion(store: Path, name: str, version: int = 3) -> ModelVersion:
    return ModelVersion(version=version, status="Approved", created_at="2026-01-01T00:00:00+00:00",
                        artifact_uri=model(store, name))


def run(store: Path, candidate: str, champion_version: ModelVersion | None, out: str, **overrides) -> dict:
    options = dict(min_relative_improvement=0.03, bootstrap_samples=200, seed=7, approval_status="Approved")
    options.update(overrides)
    return evaluate.run(str(store / "prepared"), model(store, candidate), str(store / out),
                        champion=champion_version, **options)


def test_a_better_candidate_beats_the_champion_and_the_report_has_the_agreed_shape(store):
    report = run(store, "clustered", champion(store, "random"), "better")
    assert set(report) == REPORT_KEYS
    assert json.loads((store / "better" / "evaluation.json").read_text()) == report
    # the candidate here is built by hand, not by TrainEmbeddings: it records no validation choice
    assert report["training_selection"] is None
    assert set(report["candidate"]) == set(METRIC_KEYS) == set(report["champion"])
    assert report["baseline"]["name"] == "popularity" and set(report["baseline"]) == {"name", *METRIC_KEYS}
    comparison = report["comparison"]
    assert comparison["against"] == "champion" and comparison["metric"] == "recall_at_10"
    assert comparison["resampled"] == "users" and comparison["bootstrap_samples"] == 200
    assert comparison["confidence"] == 0.95
    assert comparison["ci_low"] <= comparison["relative_improvement"] <= comparison["ci_high"]
    assert report["candidate"]["recall_at_10"] > report["champion"]["recall_at_10"]
    assert report["improved"] is True and report["decision"] == "approved"
    assert report["champion_version"] == 3
    assert report["decision_reason"].startswith(
        f"recall@10 {report['candidate']['recall_at_10']:.3f} vs champion v3 {report['champion']['recall_at_10']:.3f}: +"
    )
    assert report["decision_reason"].endswith(">= 3.0% threshold and CI above 0")
    assert report["threshold"] == {"min_relative_improvement": 0.03}
    assert report["holdout"] == {"users": 60, "queries": 180, "apps": 40}
    studio = report["similarity_metrics"]
    assert set(studio) == set(METRIC_KEYS)
    assert all(set(entry) == {"value", "standard_deviation"} for entry in studio.values())
    assert studio["recall_at_10"]["value"] == report["candidate"]["recall_at_10"]
    # the clustered model's CTR comes from apps like it: better than the baseline's global average
    assert report["candidate"]["ctr_mae"] < report["baseline"]["ctr_mae"]
    assert report["candidate"]["coverage"] > report["baseline"]["coverage"]


def test_a_candidate_identical_to_the_champion_is_rejected(store):
    report = run(store, "clustered", champion(store, "clustered"), "same")
    assert report["comparison"]["relative_improvement"] == 0.0
    assert report["candidate"] == report["champion"]
    assert report["improved"] is False and report["decision"] == "rejected"
    assert "< 3.0% threshold and CI not above 0" in report["decision_reason"]


def test_without_a_champion_the_candidate_is_compared_with_popularity(store):
    report = run(store, "clustered", None, "first", approval_status="PendingManualApproval")
    assert report["champion"] is None and report["champion_version"] is None
    assert report["comparison"]["against"] == "popularity"
    assert "vs popularity baseline" in report["decision_reason"]
    assert report["improved"] is True and report["decision"] == "pending"


def test_a_champion_that_knows_fewer_apps_is_scored_on_the_same_queries(store):
    report = run(store, "clustered", champion(store, "half"), "half")
    assert report["holdout"]["queries"] == 180
    # queries about apps the champion does not know get no hits
    assert 0 < report["champion"]["recall_at_10"] < report["candidate"]["recall_at_10"]
    assert report["improved"] is True


def test_the_processing_entry_point_reads_the_champion_from_the_registry(store, tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    registry.register(model(store, "random"), "Approved", {}, {})
    registry.register(model(store, "clustered"), "Rejected", {}, {})
    output = tmp_path / "processing" / "output" / "evaluation"
    completed = subprocess.run(
        [sys.executable, "-m", "steps.evaluate",
         "--prepared", str(store / "prepared"), "--model", str(store / "clustered"), "--output", str(output),
         "--registry", registry.uri, "--min-relative-improvement", "0.05", "--bootstrap-samples", "100",
         "--seed", "3", "--approval-status", "PendingManualApproval"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads((output / "evaluation.json").read_text())
    assert report["champion_version"] == 1  # the newest Approved version, not the newer Rejected one
    assert report["threshold"] == {"min_relative_improvement": 0.05}
    assert report["comparison"]["bootstrap_samples"] == 100
    assert report["decision"] == "pending"
    assert "EvaluateCandidate: pending: recall@10" in completed.stderr
