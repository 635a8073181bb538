"""Where things live in a store (a local folder or an S3 prefix): one definition for all.

    <store>/catalog/apps.parquet            app catalog (feature-store snapshot)
    <store>/feedback/YYYY/MM/DD/HH/*.gz     feedback events in Firehose's layout (UTC hour of *arrival*)
    <store>/ground_truth/neighbors.parquet  simulator only: true neighbours (app_id, neighbor_id, rank, similarity)
    <store>/ground_truth/simulation.json    simulator only: what was generated and injected
    <store>/ground_truth/faults.parquet     simulator only: each injected fault (file, line, kind, reason, event_id, event_type)
    <store>/ground_truth/apps.parquet       simulator only: latent truth per app (cluster, genre, popularity, latent)
    <store>/runs/<run_id>/run.json          one pipeline run: parameters, step statuses, outputs
    <store>/runs/<run_id>/heartbeat.json    rewritten every 10 s while the run runs (abandoned runs go stale)
    <store>/runs/<run_id>/<step>/...        each step's outputs (prepared data, MODEL_TARBALL, EVALUATION_REPORT)
    <store>/registry.db                     the embedded (SQLite) model registry; the paths in it are
                                            relative to the store, so a copied store works as it is
    <store>/neighbors/v<N>/                 bulk neighbours of version N (neighbors.parquet, manifest.json)

The feedback hour folders are read and written only through this module. One lateness rule:
an event may land in an hour folder up to ``MAX_DELIVERY_DELAY`` (24 h) after its own ``ts``,
because that is how long the delivery path may hold it: Firehose retries a failed S3 delivery
for up to 24 h, a Kinesis stream keeps records 24 h by default, and partners forward click and
conversion batches daily. Every reader of a time window (prepare, the A/B analysis, drift)
therefore reads the arrival hours ``[start's hour, end + 24 h)``, never past the moment it acts
for (``as_of``: what had not arrived by then could not have been known; this is what keeps a
replayed decision from reading the future), and then selects events by their own ``ts``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from models import storage

CATALOG_FILE = "apps.parquet"           # the catalog's file name (SageMaker hands over its folder)
MODEL_TARBALL = "model.tar.gz"          # the model artifact, as SageMaker extracts it to /opt/ml/model
EVALUATION_REPORT = "evaluation.json"   # EvaluateCandidate's report (a SageMaker PropertyFile)
EVALUATION_PAGE = "report.html"         # the same report for a person, written beside it
MAX_DELIVERY_DELAY = timedelta(hours=24)  # how long after its ts an event may still arrive (module doc)
FEEDBACK = "feedback"                   # the feedback folder of a store
HOUR_FOLDER_FORMAT = "%Y/%m/%d/%H"      # Firehose's default S3 prefix: UTC hour of arrival


class StoreNotAFolder(storage.StorageError):
    """--store names a file (or a path through one): a usage error."""


class StoreReadOnly(storage.StorageError):
    """A command that writes was pointed at a store this process cannot write."""


def check_store(store: str, writing: bool) -> None:
    """A local store must be a folder (created on first write), and writable for commands that write.

    Checked up front so that the user reads one line naming the store and the fix, instead of an
    error from whichever file happened to be touched first."""
    if not storage.is_local(store):
        return
    path = storage.local_path(store)
    nearest = path
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent  # the folder a new store would be created in
    if not nearest.is_dir():
        raise StoreNotAFolder(f"the store {path} is {'a file' if nearest == path else f'under the file {nearest}'}, "
                              "not a folder: pass --store with a folder (a new one is created) or move the file away")
    if writing and not os.access(nearest, os.W_OK):
        raise StoreReadOnly(f"the store {path} is read-only for this process and this command writes to it: run it "
                            f"on a writable store (fix the permissions, or copy it: cp -r {path} NEW and --store NEW)")


def catalog_uri(store: str) -> str:
    return storage.join(store, "catalog", CATALOG_FILE)


def feedback_uri(store: str) -> str:
    return storage.join(store, FEEDBACK)


def ground_truth_uri(store: str) -> str:
    return storage.join(store, "ground_truth")


def runs_uri(store: str) -> str:
    return storage.join(store, "runs")


def run_uri(store: str, run_id: str) -> str:
    return storage.join(store, "runs", run_id)


def step_uri(store: str, run_id: str, step: str) -> str:
    return storage.join(store, "runs", run_id, step)


def default_registry_uri(store: str) -> str:
    """The embedded registry of a local store: ``sqlite://<store>/registry.db``."""
    return f"sqlite://{storage.local_path(store) / 'registry.db'}"


def neighbors_uri(store: str, version: int) -> str:
    return storage.join(store, "neighbors", f"v{version}")


# --- the feedback hour folders ------------------------------------------------------------------
def hour_folder(arrival: datetime) -> str:
    """``YYYY/MM/DD/HH`` of the UTC hour an object arrived in (relative to the feedback folder)."""
    return arrival.astimezone(timezone.utc).strftime(HOUR_FOLDER_FORMAT)


def feedback_prefix(arrival: datetime) -> str:
    """``feedback/YYYY/MM/DD/HH/``, relative to the store: Firehose's S3 prefix for a record that
    arrived at ``arrival``."""
    return f"{FEEDBACK}/{hour_folder(arrival)}/"


def feedback_object_uri(feedback: str, arrival: datetime, name: str) -> str:
    """Where a feedback object named ``name`` that arrived at ``arrival`` lives."""
    return storage.join(feedback, hour_folder(arrival), name)


def arrival_hours(start: datetime, end: datetime, as_of: datetime | None = None) -> list[datetime]:
    """The hour folders that can hold events with ``ts`` in ``[start, end)``: start's hour up to
    ``end + MAX_DELIVERY_DELAY``, and not past ``as_of``."""
    stop = end + MAX_DELIVERY_DELAY if as_of is None else min(end + MAX_DELIVERY_DELAY, as_of)
    hour = start.replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < stop:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


@dataclass(frozen=True)
class FeedbackFiles:
    files: list[str]    # in arrival order
    ignored: list[str]  # files in the window's day folders that are not in an hour folder


def feedback_files(feedback: str, start: datetime, end: datetime, as_of: datetime | None = None) -> FeedbackFiles:
    """The files that can hold events of ``[start, end)`` (``arrival_hours``), in arrival order:
    one listing per day folder, filtered to the hour folders."""
    hours = arrival_hours(start, end, as_of)
    wanted = {hour_folder(hour) for hour in hours}
    files: list[str] = []
    ignored: list[str] = []
    for day in sorted({folder[:10] for folder in wanted}):
        day_uri = storage.join(feedback, day)
        for uri in storage.list_files(day_uri):
            relative = uri[len(day_uri):].lstrip("/")
            hour = relative.split("/", 1)[0]
            if "/" not in relative or not (hour.isdigit() and len(hour) == 2):
                ignored.append(uri)
            elif f"{day}/{hour}" in wanted:
                files.append(uri)
    return FeedbackFiles(files, ignored)


def hour_folders(feedback: str, newest_first: bool = False) -> Iterator[tuple[datetime, str]]:
    """(UTC hour, folder URI) of every ``YYYY/MM/DD/HH`` folder, in time order; a folder whose
    name is not a date is not Firehose's layout and is passed over. Lazy: newest-first callers
    that stop early list only the newest folders."""
    def numbered(uri: str) -> list[str]:
        return sorted((name for name in storage.list_dirs(uri) if name.isdigit()), reverse=newest_first)

    for year in numbered(feedback):
        for month in numbered(storage.join(feedback, year)):
            for day in numbered(storage.join(feedback, year, month)):
                for hour in numbered(storage.join(feedback, year, month, day)):
                    try:
                        moment = datetime(int(year), int(month), int(day), int(hour), tzinfo=timezone.utc)
                    except ValueError:
                        continue
                    yield moment, storage.join(feedback, year, month, day, hour)


def last_arrival_hour(feedback: str) -> datetime | None:
    """The newest hour folder that holds a file: where the data ends. A few listings, newest first."""
    return next((hour for hour, uri in hour_folders(feedback, newest_first=True) if storage.list_files(uri)), None)
