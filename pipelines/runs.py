"""Run records: every pipeline run, its parameters, each step's status, duration, outputs and
error, kept in the store as ``runs/<run_id>/run.json`` (works for local and S3 stores)."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from models import layout, storage


class RunNotFound(LookupError):
    def __init__(self, run_id: str):
        super().__init__(f"no run '{run_id}' in this store; `appsim runs list` shows the runs")


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending | running | succeeded | failed | skipped
    started_at: str | None = None
    duration_seconds: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunRecord:
    run_id: str
    started_at: str
    parameters: dict[str, Any]
    store: str
    registry: str
    status: str = "running"  # running | succeeded | failed
    ended_at: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        steps = [StepRecord(**s) for s in data.get("steps", [])]
        return cls(**{**data, "steps": steps})


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def save_run(record: RunRecord) -> None:
    storage.write_json(storage.join(layout.run_uri(record.store, record.run_id), "run.json"), record.to_dict())


def load_run(store: str, run_id: str) -> RunRecord:
    uri = storage.join(layout.run_uri(store, run_id), "run.json")
    if not storage.exists(uri):
        raise RunNotFound(run_id)
    return RunRecord.from_dict(storage.read_json(uri))


def list_runs(store: str) -> list[RunRecord]:
    """Every recorded run, newest first (run ids start with their UTC start time)."""
    runs = []
    for run_id in reversed(storage.list_dirs(layout.runs_uri(store))):
        uri = storage.join(layout.run_uri(store, run_id), "run.json")
        if storage.exists(uri):
            runs.append(RunRecord.from_dict(storage.read_json(uri)))
    return runs
