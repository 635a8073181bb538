"""Run records: every pipeline run, its parameters, each step's status, duration, outputs and
error, kept in the store as ``runs/<run_id>/run.json`` (works for local and S3 stores).

A run that is running writes ``runs/<run_id>/heartbeat.json`` every ``HEARTBEAT_SECONDS``. A
process killed mid-run (kill -9, OOM, a lost machine) cannot record its end, so whoever reads the
run next marks it ``abandoned``: at once when its process is gone from this host, otherwise once
its heartbeat is ``STALE_AFTER_SECONDS`` old. The mark is saved when the store is writable and
shown either way.
"""

from __future__ import annotations

import secrets
import socket
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any

from models import layout, storage
from models.events import parse_utc
from models.processes import pid_alive

HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 60.0  # six missed heartbeats
HEARTBEAT = "heartbeat.json"


class RunNotFound(LookupError):
    def __init__(self, run_id: str):
        super().__init__(f"no run '{run_id}' in this store; `appsim runs list` shows the runs")


@dataclass
class StepRecord:
    name: str
    status: str = "pending"  # pending | running | succeeded | failed | skipped | abandoned
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
    status: str = "running"  # running | succeeded | failed | abandoned
    ended_at: str | None = None
    host: str | None = None  # where the running process is (None in records older than heartbeats)
    pid: int | None = None
    steps: list[StepRecord] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """Fields a newer appsim added are ignored, so an older reader still lists the runs."""
        steps = [StepRecord(**_known(StepRecord, s)) for s in data.get("steps", [])]
        return cls(**{**_known(cls, data), "steps": steps})


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(kind)}
    return {key: value for key, value in data.items() if key in names}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def save_run(record: RunRecord) -> None:
    storage.write_json(storage.join(layout.run_uri(record.store, record.run_id), "run.json"), record.to_dict())


def read_run(store: str, uri: str) -> RunRecord:
    """A run record as this copy of the store sees it: locations it recorded under the store it ran
    in point into ``store`` (a copied or restored store), and a dead run is marked abandoned."""
    data = storage.read_json(uri)
    recorded, here = data.get("store"), storage.normalize(store)
    if recorded and recorded != here:
        data = _rebased(data, recorded, here)
    return settle(RunRecord.from_dict(data))


def _rebased(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {key: _rebased(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebased(item, old, new) for item in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


def load_run(store: str, run_id: str) -> RunRecord:
    uri = storage.join(layout.run_uri(store, run_id), "run.json")
    if not storage.exists(uri):
        raise RunNotFound(run_id)
    return read_run(store, uri)


def list_runs(store: str) -> list[RunRecord]:
    """Every recorded run, newest first (run ids start with their UTC start time)."""
    runs = []
    for run_id in reversed(storage.list_dirs(layout.runs_uri(store))):
        uri = storage.join(layout.run_uri(store, run_id), "run.json")
        if storage.exists(uri):
            runs.append(read_run(store, uri))
    return runs


class Heartbeat:
    """While a run runs, a daemon thread rewrites its heartbeat file every ``every`` seconds."""

    def __init__(self, record: RunRecord, every: float = HEARTBEAT_SECONDS):
        self.uri = storage.join(layout.run_uri(record.store, record.run_id), HEARTBEAT)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name="appsim-run-heartbeat", daemon=True)

    def beat(self) -> None:
        storage.write_json(self.uri, {"at": now()})

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat only makes the run look stale sooner; never stop beating
                pass

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


def last_heartbeat(record: RunRecord) -> datetime:
    """When the run last showed life: its heartbeat, else its start."""
    uri = storage.join(layout.run_uri(record.store, record.run_id), HEARTBEAT)
    try:
        return parse_utc(storage.read_json(uri)["at"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return parse_utc(record.started_at)


def _process_gone(record: RunRecord) -> bool:
    if record.pid is None or record.host != socket.gethostname():
        return False  # another machine's process: only its heartbeat can tell
    return not pid_alive(record.pid)


def abandoned_reason(record: RunRecord, at: datetime | None = None) -> str | None:
    """Why a run marked running is dead, or None while it may still be running."""
    if record.status != "running":
        return None
    if _process_gone(record):
        return f"its process {record.pid} on {record.host} is gone (killed or crashed)"
    last = last_heartbeat(record)
    if (at or datetime.now(timezone.utc)) - last > timedelta(seconds=STALE_AFTER_SECONDS):
        return f"no heartbeat from {record.host} since {last.isoformat(timespec='seconds')}"
    return None


def settle(record: RunRecord) -> RunRecord:
    """Mark a run whose process died ``abandoned`` (and its running step); saved when the store allows."""
    reason = abandoned_reason(record)
    if reason is None:
        return record
    record.status = "abandoned"
    record.ended_at = last_heartbeat(record).isoformat(timespec="seconds")
    for step in record.steps:
        if step.status == "running":
            step.status, step.error = "abandoned", f"abandoned: {reason}"
    try:
        save_run(record)
    except (OSError, storage.StorageError):  # a read-only store: shown as abandoned, not saved
        pass
    return record
