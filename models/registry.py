"""The model registry contract: one small interface, one backend per place versions live.

Versions are numbered 1, 2, 3... in one model package group; status is one of
``PendingManualApproval``, ``Approved``, ``Rejected``; the champion is the newest Approved
version. Every candidate is recorded, with its metrics and lineage, whatever the decision.

Backends: ``sqlite:///path/registry.db`` (the embedded default, ``models/registry_sqlite.py``)
and ``sagemaker://<model-package-group>`` (SageMaker Model Registry).
``models/registry_backends.py`` (``open_registry``) picks one from a registry URI: it imports the
backends, which import this module, so this module imports none of them (no cycle); the shared contract tests in ``tests/models/test_registry_contract.py``
run against every backend.
"""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["PendingManualApproval", "Approved", "Rejected"]
STATUSES: tuple[str, ...] = ("PendingManualApproval", "Approved", "Rejected")


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked."""


class VersionNotFound(RegistryError, KeyError):
    def __init__(self, version: int, where: str):
        super().__init__(f"model version {version} does not exist in {where}; `appsim registry list` shows the versions")
        self.version = version

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class ModelVersion(BaseModel):
    version: int
    status: Status
    created_at: datetime
    artifact_uri: str
    evaluation_uri: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    status_reason: str = ""

    @property
    def recall_at_10(self) -> float | None:
        value = self.metrics.get("recall_at_10")
        return None if value is None else float(value)


class Registry(abc.ABC):
    """Where model versions are recorded. Implementations must be safe for concurrent writers."""

    uri: str

    @abc.abstractmethod
    def register(
        self,
        artifact_uri: str,
        status: Status,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        evaluation_uri: str | None = None,
        status_reason: str = "",
    ) -> ModelVersion:
        """Record a new version with the next number and return it."""

    @abc.abstractmethod
    def get(self, version: int) -> ModelVersion:
        """One version; ``VersionNotFound`` when there is none with that number."""

    @abc.abstractmethod
    def list_versions(self) -> list[ModelVersion]:
        """Every version, newest (highest number) first."""

    @abc.abstractmethod
    def set_status(self, version: int, status: Status, reason: str = "") -> ModelVersion:
        """Approve, reject or re-open a version."""

    def champion(self) -> ModelVersion | None:
        """The newest Approved version, or None before anything was approved."""
        for version in self.list_versions():
            if version.status == "Approved":
                return version
        return None

    def approved(self) -> list[ModelVersion]:
        return [v for v in self.list_versions() if v.status == "Approved"]


def check_status(status: str) -> Status:
    if status not in STATUSES:
        raise RegistryError(f"unknown status '{status}'; use one of {', '.join(STATUSES)}")
    return status  # type: ignore[return-value]
