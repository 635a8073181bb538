"""One contract, every registry backend: SQLite (the embedded default) and SageMaker (on moto)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import boto3
import pytest
from moto import mock_aws

from models.registry import ModelVersion, Registry, RegistryError, VersionNotFound
from models.registry_backends import open_registry
from models.registry_sagemaker import SageMakerRegistry, decode_metadata, encode_metadata
from models.registry_sqlite import SQLiteRegistry

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/appsim:test"
GROUP = "appsim-contract"


@pytest.fixture(params=["sqlite", "sagemaker"])
def make_registry(request, tmp_path, aws_env) -> Iterator[Callable[[], Registry]]:
    """A factory of registry handles on one shared registry (each handle like a separate writer)."""
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        yield lambda: SQLiteRegistry(path)
    else:
        with mock_aws():
            yield lambda: SageMakerRegistry(GROUP, image_uri=IMAGE, client=boto3.client("sagemaker"))


def _register(registry: Registry, n: int, status: str = "PendingManualApproval") -> ModelVersion:
    return registry.register(
        artifact_uri=f"s3://bucket/runs/run-{n}/train/model.tar.gz",
        status=status,
        metrics={"recall_at_10": 0.1 + n / 100, "compared_against": "champion", "champion_version": None},
        lineage={"run_id": f"run-{n}", "window": {"end": "2026-01-31T00:00:00+00:00", "days": 28},
                 "code_version": "0.1.0", "note": "a sentence, with commas (and parentheses)"},
        evaluation_uri=f"s3://bucket/runs/run-{n}/evaluate/evaluation.json",
        status_reason=f"recall@10 improved by {n}% (CI 1% to 5%)",
    )


def test_versions_are_numbered_from_one_and_listed_newest_first(make_registry):
    registry = make_registry()
    created = [_register(registry, n) for n in (1, 2, 3)]
    assert [v.version for v in created] == [1, 2, 3]
    listed = registry.list_versions()
    assert [v.version for v in listed] == [3, 2, 1]
    assert listed[0].artifact_uri == "s3://bucket/runs/run-3/train/model.tar.gz"


def test_a_version_keeps_its_metrics_lineage_and_evaluation(make_registry):
    registry = make_registry()
    _register(registry, 1)
    version = registry.get(1)
    assert version.status == "PendingManualApproval"
    assert version.metrics == {"recall_at_10": pytest.approx(0.11), "compared_against": "champion", "champion_version": None}
    assert version.lineage == {"run_id": "run-1", "window": {"end": "2026-01-31T00:00:00+00:00", "days": 28},
                               "code_version": "0.1.0", "note": "a sentence, with commas (and parentheses)"}
    assert version.evaluation_uri == "s3://bucket/runs/run-1/evaluate/evaluation.json"
    assert version.status_reason == "recall@10 improved by 1% (CI 1% to 5%)"
    assert version.recall_at_10 == pytest.approx(0.11)


def test_champion_is_the_newest_approved_version(make_registry):
    registry = make_registry()
    assert registry.champion() is None
    _register(registry, 1, "Approved")
    _register(registry, 2, "Approved")
    _register(registry, 3, "Rejected")
    _register(registry, 4, "PendingManualApproval")
    assert registry.champion().version == 2
    assert [v.version for v in registry.approved()] == [2, 1]


def test_approve_and_reject_change_status_and_champion(make_registry):
    registry = make_registry()
    _register(registry, 1, "Approved")
    _register(registry, 2)
    approved = registry.set_status(2, "Approved", "signed off by the on-call data scientist")
    assert approved.status == "Approved" and approved.status_reason == "signed off by the on-call data scientist"
    assert registry.champion().version == 2
    registry.set_status(2, "Rejected", "rolled back: CTR dropped in the A/B test")
    assert registry.champion().version == 1
    # The rest of the version is untouched by a status change.
    assert registry.get(2).lineage["run_id"] == "run-2"
    assert registry.get(2).metrics["recall_at_10"] == pytest.approx(0.12)


def test_unknown_version_and_status_are_refused(make_registry):
    registry = make_registry()
    _register(registry, 1)
    with pytest.raises(VersionNotFound, match="model version 7 does not exist"):
        registry.get(7)
    with pytest.raises(VersionNotFound):
        registry.set_status(7, "Approved")
    with pytest.raises(RegistryError, match="unknown status"):
        registry.set_status(1, "Shipped")  # type: ignore[arg-type]


def test_concurrent_writers_in_threads_never_share_a_number(make_registry):
    # SageMaker numbers versions on the service side; SQLite under its write lock.
    def write(n: int) -> int:
        return _register(make_registry(), n).version

    with ThreadPoolExecutor(max_workers=6) as pool:
        numbers = list(pool.map(write, range(1, 13)))
    assert sorted(numbers) == list(range(1, 13))


def _write_in_process(path: str, start: int, count: int) -> list[int]:
    registry = SQLiteRegistry(path)
    return [_register(registry, n).version for n in range(start, start + count)]


def test_sqlite_writers_in_separate_processes_never_share_a_number(tmp_path):
    path = str(tmp_path / "registry.db")
    SQLiteRegistry(path)
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(_write_in_process, [(path, 10 * i, 5) for i in range(4)])
    numbers = sorted(n for chunk in results for n in chunk)
    assert numbers == list(range(1, 21))


def test_open_registry_picks_the_backend_from_the_uri(tmp_path, aws_env):
    assert isinstance(open_registry(f"sqlite://{tmp_path / 'r.db'}"), SQLiteRegistry)
    with mock_aws():
        registry = open_registry("sagemaker://appsim-open")
        assert isinstance(registry, SageMakerRegistry)
        boto3.client("sagemaker").describe_model_package_group(ModelPackageGroupName="appsim-open")


def test_sagemaker_version_lives_in_the_model_package_fields(aws_env):
    with mock_aws():
        registry = SageMakerRegistry(GROUP, image_uri=IMAGE)
        version = _register(registry, 1, "Approved")
        client = boto3.client("sagemaker")
        packages = client.list_model_packages(ModelPackageGroupName=GROUP, SortBy="CreationTime", SortOrder="Descending")
        package = client.describe_model_package(ModelPackageName=packages["ModelPackageSummaryList"][0]["ModelPackageArn"])
    assert package["ModelPackageVersion"] == version.version == 1
    assert package["ModelApprovalStatus"] == "Approved"
    assert package["InferenceSpecification"]["Containers"][0] == {
        "Image": IMAGE, "ModelDataUrl": "s3://bucket/runs/run-1/train/model.tar.gz"}
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == "s3://bucket/runs/run-1/evaluate/evaluation.json"
    assert package["CustomerMetadataProperties"]["metric.recall_at_10"] == "num:0.11"
    assert package["CustomerMetadataProperties"]["lineage.window.days"] == "num:28"
    assert package["CustomerMetadataProperties"]["lineage.run_id"] == "run-1"


def test_metadata_encoding_round_trips_and_fits_the_api_alphabet():
    metrics = {"recall_at_10": 0.25, "champion_version": None, "improved": True, "against": "num:looks-like-a-prefix"}
    lineage = {"empty": "", "nested": {"list": [1, 2], "when": "2026-01-31T00:00:00Z"}}
    encoded = encode_metadata(metrics, lineage)
    assert all(len(v) <= 256 and "," not in v and '"' not in v for v in encoded.values())
    assert decode_metadata(encoded) == (metrics, lineage)
    with pytest.raises(RegistryError, match="at most 256"):
        encode_metadata({}, {"huge": "x, " * 200})


def test_sagemaker_register_without_an_image_names_the_setting(aws_env, monkeypatch):
    monkeypatch.delenv("APPSIM_IMAGE_URI", raising=False)
    with mock_aws():
        registry = SageMakerRegistry(GROUP)
        with pytest.raises(RegistryError, match="sagemaker.image_uri"):
            _register(registry, 1)
