"""The local runner: executes the graph of pipelines/graph.py in this process, with the same
parameters and the same condition as the SageMaker pipeline.

Every run is recorded in the store (pipelines/runs.py), rewritten after every step so a crash
leaves an honest record. A step that fails names itself and its cause (``StepFailed``).
"""

from __future__ import annotations

import importlib
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
from steps import evaluate, export_neighbors, register
from steps.prepare_duckdb import DuckDBSettings

Echo = Callable[[str], None]


# What the run record shows of each job's result (besides the output's URI).
_SUMMARIES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "PrepareFeedback": lambda manifest: {"counts": manifest.get("counts", {})},
    "TrainEmbeddings": lambda manifest: {"embeddings_sha256": manifest["files"]["embeddings.npy"],
                                         "index": manifest.get("index", {})},
    "EvaluateCandidate": lambda report: {"decision": report["decision"], "champion_version": report.get("champion_version")},
}


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
        progress = Progress("", every=5.0) if self.show_progress else Progress.quiet()
        values: dict[str, Any] = {**params.model_dump(), "window_end": window_end}
        # What the step table does not carry, asked for when the step starts: local-only settings,
        # progress and the registry's champion. The engine is a build parameter (on SageMaker it picks
        # the job; here it is an argument).
        extras: dict[str, Callable[[], dict[str, Any]]] = {
            "PrepareFeedback": lambda: {"engine": params.prepare_engine,  # spark: local mode
                                        "duckdb_settings": DuckDBSettings(**self.config.prepare.model_dump()),
                                        "progress": progress.child("PrepareFeedback")},
            "TrainEmbeddings": lambda: {"progress": progress.child("TrainEmbeddings")},
            "EvaluateCandidate": lambda: {"champion": self.registry.champion()},
        }
        uris = dict(data)  # grows with each step's output, by the names later steps read it by
        results: dict[str, Any] = {}
        for spec in graph.jobs(params.prepare_engine):
            folder = layout.step_uri(self.store, record.run_id, spec.folder)
            run = importlib.import_module(spec.run_module).run
            args = [uris[name] for name in spec.inputs]
            kwargs = {name: values[name] for name in graph.run_keywords(spec)}
            output_name, output_file = spec.output
            uris[output_name] = storage.join(folder, output_file) if output_file else folder
            results[spec.name] = self._step(
                record, spec.name, lambda: run(*args, folder, **kwargs, **extras[spec.name]()),
                summary=lambda result: {output_name: uris[output_name], **_SUMMARIES[spec.name](result)})
        condition = graph.CONDITION
        prepared, trained, report = results["PrepareFeedback"], results["TrainEmbeddings"], results[condition.step]
        prepared_uri, artifact_uri, evaluation_uri = uris["prepared_uri"], uris["artifact_uri"], uris["evaluation_uri"]
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
