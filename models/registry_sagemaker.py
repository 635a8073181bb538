"""The SageMaker Model Registry backend: one model package group, versions numbered by SageMaker.

A version is a model package in the group:

- number: ``ModelPackageVersion`` (assigned by the service, so concurrent writers never share one);
- status: ``ModelApprovalStatus``; status reason: ``ApprovalDescription``;
- artifact: ``InferenceSpecification.Containers[0].ModelDataUrl`` (the model.tar.gz);
- evaluation report: ``ModelMetrics.ModelQuality.Statistics.S3Uri`` (evaluation.json, shown in Studio);
- metrics and lineage: ``CustomerMetadataProperties``, one entry per value under ``metric.`` and
  ``lineage.`` keys (nested lineage dicts are flattened with dots).

Customer metadata values may only hold letters, digits, spaces and ``_.:/=+-@`` (1-256 chars),
so a value is stored as the plain string when it fits, ``num:<json>`` for numbers, booleans and
null, ``str:<text>`` for strings that would otherwise be misread, and ``b64:<base64 of JSON>``
for anything else. The SageMaker pipeline (pipelines/sagemaker_pipeline.py) writes the same
encoding when it registers a version.
"""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime
from typing import Any, Iterator

import boto3
from botocore.exceptions import ClientError

from models.registry import ModelVersion, Registry, RegistryError, Status, VersionNotFound, check_status

METRIC_PREFIX = "metric."
LINEAGE_PREFIX = "lineage."
NUMBER_PREFIX = "num:"
STRING_PREFIX = "str:"
BASE64_PREFIX = "b64:"
_VALUE_PREFIXES = (NUMBER_PREFIX, STRING_PREFIX, BASE64_PREFIX)
# CustomerMetadataKey / CustomerMetadataValue patterns of the SageMaker API.
_ALLOWED = re.compile(r"^[\w .:/=+\-@]*$")
MAX_VALUE_CHARS = 256
MAX_KEY_CHARS = 128
MAX_ENTRIES = 50
CONTENT_TYPE = "application/json"


def encode_value(key: str, value: Any) -> str:
    """One metadata value in the registry's encoding (see the module docstring)."""
    if isinstance(value, str) and value and _ALLOWED.match(value) and not value.startswith(_VALUE_PREFIXES):
        text = value
    elif isinstance(value, str) and _ALLOWED.match(STRING_PREFIX + value):
        text = STRING_PREFIX + value
    elif value is None or isinstance(value, (bool, int, float)):
        text = NUMBER_PREFIX + json.dumps(value)
    else:
        text = BASE64_PREFIX + base64.b64encode(json.dumps(value, sort_keys=True, default=str).encode()).decode()
    if len(text) > MAX_VALUE_CHARS:
        raise RegistryError(
            f"registry value for '{key}' is {len(text)} characters encoded; SageMaker customer metadata holds "
            f"at most {MAX_VALUE_CHARS}: keep large lineage in the run record and store its URI instead"
        )
    return text


def decode_value(text: str) -> Any:
    if text.startswith(NUMBER_PREFIX):
        return json.loads(text[len(NUMBER_PREFIX):])
    if text.startswith(STRING_PREFIX):
        return text[len(STRING_PREFIX):]
    if text.startswith(BASE64_PREFIX):
        return json.loads(base64.b64decode(text[len(BASE64_PREFIX):]))
    return text


def _flatten(prefix: str, values: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(f"{prefix}{name}.", value)
        else:
            yield f"{prefix}{name}", value


def encode_metadata(metrics: dict[str, Any], lineage: dict[str, Any]) -> dict[str, str]:
    entries = dict(_flatten(METRIC_PREFIX, {k: v for k, v in metrics.items()}))
    entries.update(_flatten(LINEAGE_PREFIX, lineage))
    if len(entries) > MAX_ENTRIES:
        raise RegistryError(
            f"{len(entries)} metrics and lineage entries; SageMaker customer metadata holds at most {MAX_ENTRIES}"
        )
    for key in entries:
        if len(key) > MAX_KEY_CHARS or not _ALLOWED.match(key):
            raise RegistryError(f"metadata key '{key}' is not allowed: use letters, digits and _.:/=+-@ (max {MAX_KEY_CHARS})")
    return {key: encode_value(key, value) for key, value in entries.items()}


def decode_metadata(properties: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics: dict[str, Any] = {}
    lineage: dict[str, Any] = {}
    for key, text in sorted(properties.items()):
        if key.startswith(METRIC_PREFIX):
            metrics[key[len(METRIC_PREFIX):]] = decode_value(text)
        elif key.startswith(LINEAGE_PREFIX):
            node = lineage
            *parents, leaf = key[len(LINEAGE_PREFIX):].split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = decode_value(text)
    return metrics, lineage


class SageMakerRegistry(Registry):
    """Versions in a SageMaker model package group (created when missing).

    ``image_uri`` is the inference image recorded with each version (InferenceSpecification needs
    one); default: ``$APPSIM_IMAGE_URI``. Only ``register`` needs it.
    """

    def __init__(self, group_name: str, *, image_uri: str | None = None, client: Any = None):
        if not group_name:
            raise RegistryError("sagemaker:// needs a model package group name, e.g. sagemaker://appsim-app-embeddings")
        self.group_name = group_name
        self.uri = f"sagemaker://{group_name}"
        self.image_uri = image_uri
        self.client = client or boto3.client("sagemaker")
        self._ensure_group()

    def _ensure_group(self) -> None:
        try:
            self.client.describe_model_package_group(ModelPackageGroupName=self.group_name)
            return
        except ClientError as error:
            if not _is_validation_error(error):
                raise
        try:
            self.client.create_model_package_group(
                ModelPackageGroupName=self.group_name,
                ModelPackageGroupDescription="appsim app-embedding model versions",
            )
        except ClientError:
            # Another writer may have created it in between; anything else surfaces on describe.
            self.client.describe_model_package_group(ModelPackageGroupName=self.group_name)

    def _image(self) -> str:
        image = self.image_uri or os.environ.get("APPSIM_IMAGE_URI", "")
        if not image:
            raise RegistryError(
                "registering on SageMaker needs the inference image: set sagemaker.image_uri in pipeline.yaml "
                "or APPSIM_IMAGE_URI to the appsim image in ECR"
            )
        return image

    # -- writing -----------------------------------------------------------------------
    def register(
        self,
        artifact_uri: str,
        status: Status,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        evaluation_uri: str | None = None,
        status_reason: str = "",
    ) -> ModelVersion:
        check_status(status)
        request: dict[str, Any] = {
            "ModelPackageGroupName": self.group_name,
            "ModelApprovalStatus": status,
            "InferenceSpecification": {
                "Containers": [{"Image": self._image(), "ModelDataUrl": artifact_uri}],
                "SupportedContentTypes": [CONTENT_TYPE],
                "SupportedResponseMIMETypes": [CONTENT_TYPE],
            },
            "CustomerMetadataProperties": encode_metadata(metrics, lineage),
        }
        if evaluation_uri:
            request["ModelMetrics"] = {"ModelQuality": {"Statistics": {"ContentType": CONTENT_TYPE, "S3Uri": evaluation_uri}}}
        arn = self.client.create_model_package(**request)["ModelPackageArn"]
        if status_reason:
            # CreateModelPackage takes no approval description; set it right after.
            self._update(arn, status, status_reason, request["CustomerMetadataProperties"])
        return self._version(self.client.describe_model_package(ModelPackageName=arn))

    def set_status(self, version: int, status: Status, reason: str = "") -> ModelVersion:
        check_status(status)
        arn = self._arn(version)
        current = self.client.describe_model_package(ModelPackageName=arn)
        self._update(arn, status, reason, current.get("CustomerMetadataProperties") or {})
        return self._version(self.client.describe_model_package(ModelPackageName=arn))

    def _update(self, arn: str, status: str, reason: str, metadata: dict[str, str]) -> None:
        # The metadata is sent again on purpose: an update must leave it as it was.
        request: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": status, "ApprovalDescription": reason}
        if metadata:
            request["CustomerMetadataProperties"] = metadata
        self.client.update_model_package(**request)

    # -- reading -----------------------------------------------------------------------
    def _summaries(self, status: str | None = None) -> Iterator[dict[str, Any]]:
        """Model package summaries of the group, newest first (sorted explicitly, never by default)."""
        kwargs: dict[str, Any] = {
            "ModelPackageGroupName": self.group_name,
            "ModelPackageType": "Versioned",
            "SortBy": "CreationTime",
            "SortOrder": "Descending",
        }
        if status:
            kwargs["ModelApprovalStatus"] = status
        for page in self.client.get_paginator("list_model_packages").paginate(**kwargs):
            yield from page["ModelPackageSummaryList"]

    def _arn(self, version: int) -> str:
        for summary in self._summaries():
            if summary.get("ModelPackageVersion") == int(version):
                return summary["ModelPackageArn"]
        raise VersionNotFound(version, self.uri)

    def get(self, version: int) -> ModelVersion:
        return self._version(self.client.describe_model_package(ModelPackageName=self._arn(version)))

    def list_versions(self) -> list[ModelVersion]:
        # Creation times can tie to the second: the version number is the order that counts.
        summaries = sorted(self._summaries(), key=lambda s: s["ModelPackageVersion"], reverse=True)
        return [self._version(self.client.describe_model_package(ModelPackageName=s["ModelPackageArn"])) for s in summaries]

    def champion(self) -> ModelVersion | None:
        approved = list(self._summaries(status="Approved"))
        if not approved:
            return None
        newest = max(approved, key=lambda s: s["ModelPackageVersion"])
        return self._version(self.client.describe_model_package(ModelPackageName=newest["ModelPackageArn"]))

    def _version(self, package: dict[str, Any]) -> ModelVersion:
        metrics, lineage = decode_metadata(package.get("CustomerMetadataProperties") or {})
        containers = package.get("InferenceSpecification", {}).get("Containers", [])
        statistics = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
        created = package["CreationTime"]
        return ModelVersion(
            version=package["ModelPackageVersion"],
            status=package["ModelApprovalStatus"],
            created_at=created if isinstance(created, datetime) else datetime.fromisoformat(str(created)),
            artifact_uri=containers[0].get("ModelDataUrl", "") if containers else "",
            evaluation_uri=statistics.get("S3Uri"),
            metrics=metrics,
            lineage=lineage,
            status_reason=package.get("ApprovalDescription") or "",
        )


def _is_validation_error(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound")
