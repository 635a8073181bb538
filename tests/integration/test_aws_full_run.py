"""A full retraining run with the store on S3 and versions in the SageMaker Model Registry (moto
server): the runner registers a version whose ModelMetrics point at its own evaluation.json."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from models import storage
from models.registry_sagemaker import SageMakerRegistry
from models.events import parse_utc
from pipelines.config import load_config
from pipelines.runner import LocalRunner
from pipelines.simulators.marketplace import simulate

END = "2026-11-02T00:00:00Z"
DAYS = 7
GROUP = "appsim-full-run"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/appsim:1.0.0"


def test_run_on_s3_registers_a_version_whose_model_metrics_point_at_its_evaluation(aws_server_env, monkeypatch):
    bucket = f"appsim-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    simulate(store, apps=120, users=400, days=DAYS, events_per_day=1500, seed=11, fault_rate=0.0, end=parse_utc(END))

    monkeypatch.setenv("APPSIM_IMAGE_URI", IMAGE)
    config = load_config(store=store).with_overrides({"window_end": END, "window_days": DAYS, "bootstrap_samples": 200})
    config = config.model_copy(update={"backends": config.backends.model_copy(update={"registry": f"sagemaker://{GROUP}"})})
    record = LocalRunner(config).run()

    assert record.status == "succeeded"
    version_number = record.result["version"]
    evaluation_uri = record.result["evaluation_uri"]
    assert evaluation_uri == f"{store}/runs/{record.run_id}/evaluate/evaluation.json"

    registry = SageMakerRegistry(GROUP)
    version = registry.get(version_number)
    assert version.evaluation_uri == evaluation_uri
    assert version.artifact_uri == f"{store}/runs/{record.run_id}/train/model.tar.gz"
    assert version.lineage["run_id"] == record.run_id
    report = storage.read_json(evaluation_uri)
    assert version.status == {"approved": "Approved", "pending": "PendingManualApproval", "rejected": "Rejected"}[report["decision"]]
    assert version.metrics["recall_at_10"] == pytest.approx(report["candidate"]["recall_at_10"])

    client = boto3.client("sagemaker")
    (summary,) = client.list_model_packages(ModelPackageGroupName=GROUP, SortBy="CreationTime",
                                            SortOrder="Descending")["ModelPackageSummaryList"]
    package = client.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
    statistics = package["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics == {"ContentType": "application/json", "S3Uri": evaluation_uri}
    assert json.loads(storage.read_bytes(statistics["S3Uri"]))["decision"] == report["decision"]
