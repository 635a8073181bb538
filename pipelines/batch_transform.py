"""Bulk neighbours on AWS: a SageMaker Batch Transform job over the serving container.

The local ``appsim neighbors export`` runs FAISS in this process; on AWS the same rows come from
the serving image's ``/invocations`` with JSON Lines (serving/routers/invocations.py), one line per app:

1. the catalog's app ids are written as ``{"app_id": ..., "k": K}`` lines to
   ``<store>/neighbors/v<N>/transform-input/apps.jsonl``;
2. a SageMaker Model is created from version N's ``model.tar.gz`` and the appsim image (endpoint
   mode, feedback logging off: an export logs no prediction events);
3. a transform job splits the input by line, posts mini-batches (``MultiRecord``, up to
   ``MaxPayloadInMB``) and joins the answers line by line into
   ``<store>/neighbors/v<N>/transform-output/apps.jsonl.out``: the export's rows, as JSON Lines.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import boto3

from models import layout, storage
from models.catalog import read_catalog
from models.registry import ModelVersion
from pipelines.config import ConfigError, PipelineConfig

JSONLINES = "application/jsonlines"
MAX_PAYLOAD_MB = 6  # SageMaker's request limit, which the container enforces too
INPUT_FILE = "apps.jsonl"


def transform_uris(store: str, version: int) -> tuple[str, str]:
    """(input file, output prefix) of version ``version``'s transform under the store."""
    folder = layout.neighbors_uri(store, version)
    return storage.join(folder, "transform-input", INPUT_FILE), storage.join(folder, "transform-output") + "/"


def write_input(catalog_uri: str, input_uri: str, k: int) -> int:
    """One ``{"app_id", "k"}`` line per catalog app; returns the count."""
    app_ids = read_catalog(catalog_uri)["app_id"].astype(str)
    storage.write_bytes(input_uri, "".join(json.dumps({"app_id": a, "k": k}) + "\n" for a in app_ids).encode())
    return len(app_ids)


def model_request(name: str, version: ModelVersion, image_uri: str, role_arn: str) -> dict[str, Any]:
    return {
        "ModelName": name, "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {"Image": image_uri, "ModelDataUrl": version.artifact_uri, "Environment": {
            "APPSIM_MODEL_DIR": "/opt/ml/model", "APPSIM_MODEL_VERSION": str(version.version),
            "APPSIM_FEEDBACK_URI": "none", "APPSIM_SAGEMAKER_MODE": "true",
        }},
    }


def transform_job_request(job_name: str, model_name: str, input_uri: str, output_uri: str, instance_type: str,
                          instance_count: int = 1) -> dict[str, Any]:
    """The CreateTransformJob request: line-split JSON Lines in, line-assembled JSON Lines out."""
    return {
        "TransformJobName": job_name, "ModelName": model_name,
        "BatchStrategy": "MultiRecord", "MaxPayloadInMB": MAX_PAYLOAD_MB, "MaxConcurrentTransforms": 0,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                           "ContentType": JSONLINES, "SplitType": "Line", "CompressionType": "None"},
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": instance_count},
    }


def start_neighbors_transform(config: PipelineConfig, version: ModelVersion, k: int, *, role_arn: str | None = None,
                              instance_type: str | None = None, client: Any = None,
                              now: datetime | None = None) -> dict[str, Any]:
    """Write the input, create the model and start the transform job; returns what was started."""
    role = role_arn or config.sagemaker.role_arn
    problems = [text for missing, text in (
        (not config.store.startswith("s3://"), "the store must be on S3 (--store s3://bucket/prefix)"),
        (not config.sagemaker.image_uri, "sagemaker.image_uri is empty: push the appsim image and set it"),
        (not role, "no execution role: pass --role-arn or set sagemaker.role_arn"),
    ) if missing]
    if problems:
        raise ConfigError("cannot start a Batch Transform: " + "; ".join(problems))
    client = client or boto3.client("sagemaker", region_name=config.sagemaker.region)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    name = f"appsim-neighbors-v{version.version}-{stamp}"
    input_uri, output_uri = transform_uris(config.store, version.version)
    apps = write_input(layout.catalog_uri(config.store), input_uri, k)
    client.create_model(**model_request(name, version, config.sagemaker.image_uri, role))
    request = transform_job_request(name, name, input_uri, output_uri,
                                    instance_type or config.sagemaker.processing_instance_type)
    arn = client.create_transform_job(**request)["TransformJobArn"]
    return {"transform_job_arn": arn, "job_name": name, "apps": apps, "input_uri": input_uri, "output_uri": output_uri}
