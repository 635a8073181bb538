"""Where things live in a store (a local folder or an S3 prefix): one definition for all.

    <store>/catalog/apps.parquet            app catalog (feature-store snapshot)
    <store>/feedback/YYYY/MM/DD/HH/*.gz     feedback events in Firehose's layout
    <store>/ground_truth/neighbors.parquet  simulator only: true neighbours (app_id, neighbor_id, rank, similarity)
    <store>/ground_truth/simulation.json    simulator only: what was generated and injected
    <store>/ground_truth/faults.parquet     simulator only: each injected fault (file, line, kind, reason, event_id, event_type)
    <store>/ground_truth/apps.parquet       simulator only: latent truth per app (cluster, genre, popularity, latent)
    <store>/runs/<run_id>/run.json          one pipeline run: parameters, step statuses, outputs
    <store>/runs/<run_id>/heartbeat.json    rewritten every 10 s while the run runs (abandoned runs go stale)
    <store>/runs/<run_id>/<step>/...        each step's outputs (prepared data, model.tar.gz, evaluation.json)
    <store>/registry.db                     the embedded (SQLite) model registry; the paths in it are
                                            relative to the store, so a copied store works as it is
    <store>/neighbors/v<N>/                 bulk neighbours of version N (neighbors.parquet, manifest.json)
"""

from __future__ import annotations

import os

from models import storage


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
    return storage.join(store, "catalog", "apps.parquet")


def feedback_uri(store: str) -> str:
    return storage.join(store, "feedback")


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
