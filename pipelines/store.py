"""Is this store whole, and keep it within its retention (`appsim store check` / `store prune`, pipelines/cli/store.py).

``check``: what is missing or corrupt, and the fix for each.

Reads only (a read-only store or a restored copy can be checked): the store folder, the registry
(readable, SQLite's quick_check, every version's artifact present with every checksum right, its
evaluation report present), the catalog, every run record (runs left by a killed process are shown
abandoned) and the A/B experiment state. Exit 0 when nothing is wrong, 1 otherwise (warnings alone
do not fail: a Rejected version whose artifact was cleaned up is never served).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from models import layout, storage
from models.artifact import ArtifactError, ArtifactMissing, ModelArtifact
from models.catalog import CatalogInvalid, CatalogMissing, catalog_rows
from models.experiments import ExperimentError, open_experiments
from models.registry import RegistryError
from models.registry_backends import open_registry
from models.sqlite_file import SQLiteFile
from pipelines.config import ConfigError, PipelineConfig
from pipelines.runs import read_run

Severity = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Finding:
    item: str
    status: Severity
    detail: str
    fix: str = ""


def check_store(config: PipelineConfig) -> list[Finding]:
    store = config.store
    if storage.is_local(store) and not storage.local_path(store).is_dir():
        return [Finding("store", "error", f"{storage.local_path(store)} is not a folder",
                        "pass --store with the store's folder (or run `appsim simulate` to create one)")]
    return [*_registry(config), _catalog(store), *_runs(store), *_experiments(config)]


def _registry(config: PipelineConfig) -> list[Finding]:
    fix_db = "restore registry.db from a backup; the artifacts under runs/ are intact and listed by `appsim runs list`"
    try:
        registry = open_registry(config.registry_uri, read_only=True)
        versions = registry.list_versions()
        damage = registry.quick_check() if isinstance(registry, SQLiteFile) else "ok"
    except (RegistryError, ConfigError) as error:
        return [Finding("registry", "error", str(error), fix_db)]
    if damage != "ok":
        return [Finding("registry", "error", f"{registry.uri} is damaged: {damage}", fix_db)]
    findings = [Finding("registry", "ok", f"{registry.uri}: {len(versions)} version(s), integrity ok")]
    for version in versions:
        item = f"version {version.version} ({version.status})"
        # A Rejected version is never served: a missing or broken artifact there is only a warning.
        severity: Severity = "warning" if version.status == "Rejected" else "error"
        fix = (f"restore {version.artifact_uri} from a backup, or `appsim registry reject {version.version}` "
               "so it is never served")
        try:
            manifest = ModelArtifact.verify_uri(version.artifact_uri)
        except ArtifactMissing:
            findings.append(Finding(item, severity, f"artifact {version.artifact_uri} is missing", fix))
            continue
        except ArtifactError as error:
            findings.append(Finding(item, severity, f"artifact is {error.reason}: {error}", fix))
            continue
        findings.append(Finding(item, "ok", f"artifact verified: {manifest.get('app_count')} apps, "
                                            f"{manifest.get('embedding_dim')} dims, every checksum right"))
        if version.evaluation_uri and not storage.exists(version.evaluation_uri):
            findings.append(Finding(item, "warning", f"evaluation report {version.evaluation_uri} is missing",
                                    "restore it from a backup; only its report pages need it"))
    return findings


def _catalog(store: str) -> Finding:
    uri = layout.catalog_uri(store)
    try:
        return Finding("catalog", "ok", f"{uri}: {catalog_rows(uri):,} apps")
    except (CatalogMissing, CatalogInvalid) as error:
        return Finding("catalog", "error", str(error),
                       f"copy the feature-store snapshot to catalog/{layout.CATALOG_FILE} (demo data: `appsim simulate`)")


def _runs(store: str) -> list[Finding]:
    findings, counts = [], {}
    for run_id in storage.list_dirs(layout.runs_uri(store)):
        uri = storage.join(layout.run_uri(store, run_id), "run.json")
        fix = f"restore {uri} from a backup (the run's outputs beside it are untouched)"
        if not storage.exists(uri):
            findings.append(Finding(f"run {run_id}", "warning", f"{uri} is missing", fix))
            continue
        try:
            record = read_run(store, uri)
        except (ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
            findings.append(Finding(f"run {run_id}", "error", f"{uri} is not a readable run record: {error}", fix))
            continue
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.status == "abandoned":
            step = next((s for s in record.steps if s.status == "abandoned"), None)
            findings.append(Finding(f"run {run_id}", "warning",
                                    f"abandoned{f' in {step.name}' if step else ''}: {step.error if step else ''}",
                                    "nothing to repair; run `appsim retrain` again"))
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none yet"
    return [Finding("runs", "ok", f"{sum(counts.values())} recorded ({summary})"), *findings]


def _experiments(config: PipelineConfig) -> list[Finding]:
    try:
        uri = config.experiments_uri
        if uri.startswith("sqlite://") and not storage.local_path(uri[len("sqlite://"):]).exists():
            return []
        experiments = open_experiments(uri, read_only=True).list()
    except ExperimentError as error:
        return [Finding("experiments", "error", str(error),
                        "restore experiments.db from a backup, or move it aside to forget A/B history")]
    return [Finding("experiments", "ok", f"{uri}: {len(experiments)} experiment(s)")]


@dataclass(frozen=True)
class PrunedHour:
    hour: str        # YYYY/MM/DD/HH
    uri: str
    files: int
    bytes: int


def expired_hours(store: str, older_than_days: float, now: datetime) -> list[PrunedHour]:
    """Feedback hour folders whose every event is older than ``older_than_days`` (the whole hour
    ends before the cut-off), oldest first. Folders that are not ``YYYY/MM/DD/HH`` are left alone."""
    cutoff = now - timedelta(days=older_than_days)
    found = []
    for start, uri in layout.hour_folders(layout.feedback_uri(store)):
        if start + timedelta(hours=1) > cutoff:
            continue
        files, size = storage.usage(uri)
        found.append(PrunedHour(layout.hour_folder(start), uri, files, size))
    return found


def _remove_empty_parents(store: str, hours: list[PrunedHour]) -> None:
    """Day, month and year folders left empty by the prune (local stores; S3 has no folders)."""
    if not storage.is_local(store):
        return
    root = storage.local_path(layout.feedback_uri(store))
    for hour in hours:
        folder = (root / hour.hour).parent
        while folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def prune_feedback(store: str, older_than_days: float, now: datetime, dry_run: bool = False) -> list[PrunedHour]:
    """Delete the feedback hour folders ``expired_hours`` finds (nothing with ``dry_run``); returns them."""
    if not dry_run:
        layout.check_store(store, writing=True)
    hours = expired_hours(store, older_than_days, now)
    if not dry_run:
        for hour in hours:
            storage.remove(hour.uri)
        _remove_empty_parents(store, hours)
    return hours
