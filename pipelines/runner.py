"""The local runner: executes the graph of pipelines/graph.py in this process, with the same
parameters and the same condition as the SageMaker pipeline.

Every run is recorded in the store (pipelines/runs.py), rewritten after every step so a crash
leaves an honest record. A step that fails names itself and its cause (``StepFailed``).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from datetime import datetime
from typing import Any, Callable

from models import layout, storage
from models.notifications import NotificationError, publish, topic_arn
from models.progress import Progress
from models.registry import Registry
from models.registry_backends import open_registry
from pipelines import graph
from pipelines.config import PipelineConfig, PipelineParameters
from pipelines.runs import Heartbeat, RunRecord, StepRecord, list_runs, new_run_id, now, save_run
from steps import evaluate, export_neighbors, prepare, register, train
from steps.prepare_duckdb import DuckDBSettings

Echo = Callable[[str], None]


class StepFailed(RuntimeError):
    def __init__(self, step: str, cause: BaseException, run_id: str):
        super().__init__(f"step {step} failed: {type(cause).__name__}: {cause} (run {run_id})")
        self.step = step
        self.cause = cause
        self.run_id = run_id


class LocalRunner:
    """Runs the retraining graph against a config's store and registry."""

    def __init__(self, config: PipelineConfig, echo: Echo | None = None, registry: Registry | None = None):
        self.config = config
        self.store = config.store
        self.registry = registry or open_registry(config.registry_uri)
        self.show_progress = echo is not None
        self.echo = echo or (lambda message: None)

    def run(self) -> RunRecord:
        list_runs(self.store)  # marks runs left behind by a killed process abandoned before this one starts
        params = self.config.parameters
        window_end = params.resolved_window_end()
        data = {"feedback_uri": layout.feedback_uri(self.store), "catalog_uri": layout.catalog_uri(self.store)}
        parameters = {**data, **params.model_dump(), "window_end": window_end.isoformat()}
        record = RunRecord(
            run_id=new_run_id(), started_at=now(), parameters=parameters, store=self.store,
            registry=self.registry.uri, steps=[StepRecord(s.name) for s in graph.STEPS],
            host=socket.gethostname(), pid=os.getpid(),
        )
        save_run(record)
        self.echo(f"run {record.run_id}: store {self.store}, registry {self.registry.uri}")
        with Heartbeat(record):
            return self._run_steps(record, params, window_end, data, parameters)

    def _run_steps(self, record: RunRecord, params: PipelineParameters, window_end: datetime,
                   data: dict[str, str], parameters: dict[str, Any]) -> RunRecord:
        prepared_uri = layout.step_uri(self.store, record.run_id, "prepare")
        model_dir_uri = layout.step_uri(self.store, record.run_id, "train")
        evaluation_dir_uri = layout.step_uri(self.store, record.run_id, "evaluate")
        artifact_uri = storage.join(model_dir_uri, layout.MODEL_TARBALL)
        evaluation_uri = storage.join(evaluation_dir_uri, graph.CONDITION.report_file)

        progress = Progress("", every=5.0) if self.show_progress else Progress.quiet()
        prepared = self._step(record, "PrepareFeedback", lambda: prepare.run(
            data["feedback_uri"], data["catalog_uri"], prepared_uri,
            window_end=window_end, window_days=params.window_days, holdout_fraction=params.holdout_fraction,
            max_bad_fraction=params.max_bad_fraction, use_attributed_clicks=params.use_attributed_clicks,
            engine=params.prepare_engine, duckdb_settings=DuckDBSettings(**self.config.prepare.model_dump()),
            progress=progress.child("PrepareFeedback"),  # engine spark: local mode
        ), summary=lambda m: {"prepared_uri": prepared_uri, "counts": m.get("counts", {})})
        trained = self._step(record, "TrainEmbeddings", lambda: train.run(
            prepared_uri, data["catalog_uri"], model_dir_uri,
            embedding_dim=params.embedding_dim, seed=params.seed, index_type=params.index_type,
            exact_index_max_apps=params.exact_index_max_apps, progress=progress.child("TrainEmbeddings"),
        ), summary=lambda m: {"artifact_uri": artifact_uri, "embeddings_sha256": m["files"]["embeddings.npy"],
                              "index": m.get("index", {})})
        champion = self.registry.champion()
        report = self._step(record, "EvaluateCandidate", lambda: evaluate.run(
            prepared_uri, artifact_uri, evaluation_dir_uri, champion=champion,
            min_relative_improvement=params.min_relative_improvement,
            bootstrap_samples=params.bootstrap_samples, seed=params.seed, approval_status=params.approval_status,
        ), summary=lambda r: {"evaluation_uri": evaluation_uri, "decision": r["decision"],
                              "champion_version": r.get("champion_version")})

        condition = graph.CONDITION
        passed = report.get(condition.json_path) == condition.equals
        self._step(record, "CheckImprovement", lambda: passed, summary=lambda p: {"improved": p})
        chosen, skipped = (condition.if_true, condition.if_false) if passed else (condition.if_false, condition.if_true)
        for name in skipped:
            record.step(name).status = "skipped"
        lineage = {
            "run_id": record.run_id,
            "pipeline": f"local:{self.config.pipeline_name}",
            "data_window": prepared.get("window", {}),
            "code_version": trained.get("code_version", "unknown"),
            "parameters": parameters,
            "prepared_uri": prepared_uri,
        }
        version = None
        for name in chosen:
            version = self._step(record, name, lambda: register.run(
                self.registry, report, artifact_uri, evaluation_uri, lineage,
            ), summary=lambda v: {"version": v.version, "status": v.status})

        neighbors_uri = None
        if version is not None and version.status == "Approved" and self.config.neighbors.export_on_approval:
            neighbors_uri = export_neighbors.run(self.store, version.artifact_uri, version.version,
                                                 self.config.neighbors.k, progress=progress).uri
            self.echo(f"neighbours of version {version.version} -> {neighbors_uri}")
        record.status = "succeeded"
        record.ended_at = now()
        notification_error = self._announce_gate(report, version)
        record.result = {
            "decision": report["decision"],
            "decision_reason": report.get("decision_reason", ""),
            "version": version.version if version else None,
            "status": version.status if version else None,
            "evaluation_uri": evaluation_uri,
            "artifact_uri": artifact_uri,
            "metrics": {"candidate": report["candidate"], "champion": report.get("champion"),
                        "baseline": report.get("baseline")},
            "comparison": report.get("comparison"),
            "champion_version": report.get("champion_version"),
            "notification_error": notification_error,
            "neighbors_uri": neighbors_uri,
        }
        save_run(record)
        return record

    def _announce_gate(self, report: dict[str, Any], version: Any) -> str | None:
        """Publish the gate's decision (when a topic is configured); a failure is recorded, never fatal."""
        try:
            publish(evaluate.gate_notification(report, version.version if version else None),
                    topic_arn(self.config.notifications.sns_topic_arn), region=self.config.sagemaker.region)
        except NotificationError as error:
            self.echo(f"warning: {error}")
            return str(error)
        return None

    def _step(self, record: RunRecord, name: str, action: Callable[[], Any],
              summary: Callable[[Any], dict[str, Any]]) -> Any:
        step = record.step(name)
        step.status, step.started_at = "running", now()
        save_run(record)
        self.echo(f"[{name}] started")
        start = time.monotonic()
        try:
            result = action()
        except BaseException as error:
            step.status = "failed"
            step.duration_seconds = round(time.monotonic() - start, 3)
            step.error = f"{type(error).__name__}: {error}"
            step.outputs = {"traceback": traceback.format_exc(limit=8)}
            record.status, record.ended_at = "failed", now()
            save_run(record)
            self.echo(f"[{name}] FAILED after {step.duration_seconds:.1f}s: {step.error}")
            if isinstance(error, Exception):
                raise StepFailed(name, error, record.run_id) from error
            raise
        step.status = "succeeded"
        step.duration_seconds = round(time.monotonic() - start, 3)
        step.outputs = summary(result)
        save_run(record)
        self.echo(f"[{name}] succeeded in {step.duration_seconds:.1f}s")
        return result
