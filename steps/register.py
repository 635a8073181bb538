"""RegisterCandidate / RegisterRejected: record the candidate in the registry, whatever the gate said.

Every candidate is recorded with its metrics and lineage; one that did not beat the champion
is recorded as Rejected and the run still succeeds. On SageMaker the same decision is taken by
the pipeline's condition and the registration is a native model step; locally it is this.
"""

from __future__ import annotations

from typing import Any

from models.registry import ModelVersion, Registry, Status

DECISION_STATUS: dict[str, Status] = {
    "approved": "Approved",
    "pending": "PendingManualApproval",
    "rejected": "Rejected",
}


def registry_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """What the registry keeps of an evaluation report: the candidate's metrics and the gate's numbers."""
    comparison = report.get("comparison") or {}
    return {
        **report["candidate"],
        "relative_improvement": comparison.get("relative_improvement"),
        "ci_low": comparison.get("ci_low"),
        "ci_high": comparison.get("ci_high"),
        "compared_against": comparison.get("against"),
        "champion_version": report.get("champion_version"),
    }


def run(
    registry: Registry,
    report: dict[str, Any],
    artifact_uri: str,
    evaluation_uri: str,
    lineage: dict[str, Any],
) -> ModelVersion:
    decision = report["decision"]
    if decision not in DECISION_STATUS:
        raise ValueError(f"evaluation report decision '{decision}' is not one of {', '.join(DECISION_STATUS)}")
    return registry.register(
        artifact_uri=artifact_uri,
        status=DECISION_STATUS[decision],
        metrics=registry_metrics(report),
        lineage=lineage,
        evaluation_uri=evaluation_uri,
        status_reason=report.get("decision_reason", ""),
    )
