"""Bulk neighbours end to end: the export equals the /v1 answers of a real server, /invocations
with JSON Lines gives the same rows, and the Batch Transform job that runs it on AWS exists in moto.

Two exports are checked: the CLI's, of a model with an exact index, and one of a model with an IVF
index (the list-by-list scan), cut into many chunks searched on two threads and combined in order."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import boto3
import httpx
import orjson
import pytest
from click.testing import CliRunner

from models import layout, storage
from models.registry import ModelVersion
from models.registry_sqlite import SQLiteRegistry
from pipelines.batch_transform import start_neighbors_transform
from pipelines.cli import cli
from pipelines.config import ConfigError, load_config
from serving.app import create_app
from serving.settings import ServingSettings
from steps.export_neighbors import export, read_export
from tests.serving.helpers import build_artifact, catalog, ivf_artifact, publish, running_server, wait_for

K = 7
# The scan's scores equal FAISS's to float rounding (~1e-7, models/index.py), and the rates weigh
# the neighbours by their scores.
RATE_TOLERANCE = 1e-6


@pytest.fixture(scope="module", params=["flat, CLI", "ivf, 9 chunks on 2 threads"])
def exported(request, tmp_path_factory) -> tuple[Path, list[dict]]:
    store = tmp_path_factory.mktemp("store")
    if request.param.startswith("flat"):
        publish(SQLiteRegistry(store / "registry.db"), store, build_artifact())
        result = CliRunner().invoke(cli, ["neighbors", "export", "--k", str(K), "--store", str(store), "--json"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert (summary["model_version"], summary["apps"], summary["k"]) == (1, 240, K)
    else:
        artifact = ivf_artifact(600, nlist=12, nprobe=3)
        publish(SQLiteRegistry(store / "registry.db"), store, artifact)
        export(artifact, layout.neighbors_uri(str(store), 1), version=1, k=K, batch=70, threads=2)
    manifest, table = read_export(str(store / "neighbors" / "v1"))
    assert manifest["apps"] == table.num_rows in (240, 600)
    return store, table.to_pylist()


@pytest.fixture(scope="module")
def http(exported):
    store, _ = exported
    settings = ServingSettings(store=str(store), spill_dir=str(store / "spill"), feedback_uri="none", poll_seconds=0.1)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_for(lambda: client.get("/ping").status_code == 200)
        yield client


def test_exported_rows_equal_the_v1_answers_for_the_same_apps(exported, http):
    _, rows = exported
    assert [row["app_id"] for row in rows] == sorted(row["app_id"] for row in rows)  # app order, chunk after chunk
    for row in rows[::3]:
        similar = http.get(f"/v1/apps/{row['app_id']}/similar", params={"k": K}).json()
        assert row["neighbor_ids"] == [n["app_id"] for n in similar["neighbors"]]
        assert row["scores"] == pytest.approx([n["score"] for n in similar["neighbors"]], abs=1e-6)
        predicted = http.post("/v1/predict", json={"app_id": row["app_id"], "k": K}).json()
        for rate in ("ctr", "cvr"):
            assert (row[rate], row[f"{rate}_low"], row[f"{rate}_high"]) == pytest.approx(
                (predicted[rate]["estimate"], predicted[rate]["low"], predicted[rate]["high"]), rel=RATE_TOLERANCE)
        assert row["support_impressions"] == predicted["support_impressions"]


def test_invocations_json_lines_answer_the_export_rows_line_by_line(exported, http):
    _, rows = exported
    chosen = rows[::10]
    lines = [json.dumps({"app_id": r["app_id"], "k": K}) for r in chosen[:5]] + ["", '"no-such-app"'] \
        + [json.dumps(r["app_id"]) if i % 2 else json.dumps({"app_id": r["app_id"], "k": K}) for i, r in enumerate(chosen[5:])]
    answer = http.post("/invocations", content="\n".join(lines) + "\n",
                       headers={"Content-Type": "application/jsonlines"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/jsonlines")
    out = [orjson.loads(line) for line in answer.content.splitlines()]
    assert len(out) == len(chosen) + 1  # the blank line is no record; the unknown app is one
    assert out[5]["error"] == "unknown_app" and out[5]["app_id"] == "no-such-app"
    answered = out[:5] + out[6:]
    for i, (line, row) in enumerate(zip(answered, chosen)):
        k = K if i < 5 or (i - 5) % 2 == 0 else 10
        assert line["model_version"] == 1 and line["app_id"] == row["app_id"]
        if k == K:  # every column of the exported row, and nothing else but the version and arm
            assert set(line) == set(row) | {"model_version", "arm"}
            for name, value in row.items():
                assert line[name] == (pytest.approx(value, abs=1e-6) if name == "scores" else
                                      pytest.approx(value, rel=RATE_TOLERANCE) if isinstance(value, float) else value)
        else:
            assert len(line["neighbor_ids"]) == 10 and line["neighbor_ids"][:K] == row["neighbor_ids"]


def test_a_bad_json_line_is_a_422_naming_the_line(http):
    answer = http.post("/invocations", content=b'"app-00001"\n{"app_id": \n',
                       headers={"Content-Type": "application/jsonlines"})
    assert answer.status_code == 422
    assert answer.json()["field"] == "line 2"


def test_the_batch_transform_job_is_defined_in_moto(aws_server_env, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="appsim-bt")
    store = "s3://appsim-bt/store"
    with storage.open_uri(f"{store}/catalog/apps.parquet", "wb") as handle:
        catalog(30).to_parquet(handle)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text("backends: {store: s3://appsim-bt/store, registry: sagemaker://appsim}\n"
                           "sagemaker: {image_uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/appsim:1, "
                           "role_arn: 'arn:aws:iam::123456789012:role/appsim'}\n")
    config = load_config(config_path)
    version = ModelVersion(version=4, status="Approved", created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                           artifact_uri="s3://appsim-bt/store/runs/r1/train/model.tar.gz")
    client = boto3.client("sagemaker")
    started = start_neighbors_transform(config, version, 25, client=client,
                                        now=datetime(2026, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    job = client.describe_transform_job(TransformJobName=started["job_name"])
    assert job["TransformJobName"] == "appsim-neighbors-v4-20260203-040506"
    assert job["TransformInput"]["ContentType"] == "application/jsonlines"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["TransformOutput"]["AssembleWith"] == "Line"
    assert job["TransformOutput"]["S3OutputPath"] == "s3://appsim-bt/store/neighbors/v4/transform-output/"
    assert job["BatchStrategy"] == "MultiRecord" and job["MaxPayloadInMB"] == 6
    model = client.describe_model(ModelName=job["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == version.artifact_uri
    assert model["PrimaryContainer"]["Environment"]["APPSIM_FEEDBACK_URI"] == "none"
    lines = storage.read_bytes(started["input_uri"]).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"app_id": a, "k": 25} for a in catalog(30)["app_id"]]


def test_a_transform_without_an_s3_store_names_what_is_missing(tmp_path):
    config = load_config(None, str(tmp_path))
    version = ModelVersion(version=1, status="Approved", created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                           artifact_uri="file:///x/model.tar.gz")
    with pytest.raises(ConfigError, match="store must be on S3.*image_uri is empty.*no execution role"):
        start_neighbors_transform(config, version, 10, client=object())
