"""Where things live in a store (a local folder or an S3 prefix): one definition for all.

    <store>/catalog/apps.parquet            app catalog (feature-store snapshot)
    <store>/feedback/YYYY/MM/DD/HH/*.gz     feedback events in Firehose's layout
    <store>/ground_truth/neighbors.parquet  simulator only: true neighbours (app_id, neighbor_id, rank, similarity)
    <store>/ground_truth/simulation.json    simulator only: what was generated and injected
    <store>/ground_truth/faults.parquet     simulator only: each injected fault (file, line, kind, reason, event_id, event_type)
    <store>/ground_truth/apps.parquet       simulator only: latent truth per app (cluster, genre, popularity, latent)
    <store>/runs/<run_id>/run.json          one pipeline run: parameters, step statuses, outputs
    <store>/runs/<run_id>/<step>/...        each step's outputs (prepared data, model.tar.gz, evaluation.json)
    <store>/registry.db                     the embedded (SQLite) model registry
    <store>/neighbors/v<N>/                 bulk neighbours of version N (neighbors.parquet, manifest.json)
"""

from __future__ import annotations

from models import storage


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
