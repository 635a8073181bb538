"""`appsim store check` and `appsim store prune`: is this store whole, and keep it within its retention.

``check``: what is missing or corrupt, and the fix for each.

Reads only (a read-only store or a restored copy can be checked): the store folder, the registry
(readable, SQLite's quick_check, every version's artifact present with every checksum right, its
evaluation report present), the catalog, every run record (runs left by a killed process are shown
abandoned) and the A/B experiment state. Exit 0 when nothing is wrong, 1 otherwise (warnings alone
do not fail: a Rejected version whose artifact was cleaned up is never served).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import click

from models import layout, storage
from models.artifact import ArtifactError, ArtifactMissing, ModelArtifact
from models.catalog import CatalogInvalid, CatalogMissing, catalog_rows
from models.events import parse_utc
from models.experiments import ExperimentError, open_experiments
from models.registry import RegistryError
from models.registry_backends import open_registry
from models.sqlite_file import SQLiteFile
from pipelines.config import ConfigError, PipelineConfig, load_config
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


@click.group("store")
def store_group() -> None:
    """The store itself: check that it is whole, prune old feedback."""


@store_group.command("check")
@click.option("--store", envvar="APPSIM_STORE", default=None, help="Store folder or URI (default: $APPSIM_STORE, "
              "else backends.store in pipeline.yaml).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="pipeline.yaml to use.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check_command(store: str | None, config_path: str | None, as_json: bool) -> None:
    """Report what is missing or corrupt in the store and how to fix it; exit 1 when something is wrong."""
    config = load_config(config_path, store)
    findings = check_store(config)
    errors = sum(f.status == "error" for f in findings)
    warnings = sum(f.status == "warning" for f in findings)
    if as_json:
        click.echo(json.dumps({"store": config.store, "ok": errors == 0, "errors": errors, "warnings": warnings,
                               "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        verdict = "whole" if errors == 0 else f"{errors} problem(s)"
        click.echo(f"store {config.store}: {verdict}, {warnings} warning(s)")
        for finding in findings:
            label = {"ok": "ok", "warning": "WARN", "error": "ERROR"}[finding.status]
            click.echo(f"  {label:<6} {finding.item}: {finding.detail}")
            if finding.fix and finding.status != "ok":
                click.echo(f"         fix: {finding.fix}")
    raise SystemExit(1 if errors else 0)


@store_group.command("prune")
@click.option("--older-than", "older_than", type=click.FloatRange(min=1), default=None, metavar="DAYS",
              help="Delete feedback hour folders older than this many days (default: retention.feedback_days "
                   "in pipeline.yaml).")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--at", "at", default=None, help="Count the age from this ISO time (default: now).")
@click.option("--store", envvar="APPSIM_STORE", default=None, help="Store folder or URI (default: $APPSIM_STORE, "
              "else backends.store in pipeline.yaml).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="pipeline.yaml to use.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prune_command(older_than: float | None, dry_run: bool, at: str | None, store: str | None,
                  config_path: str | None, as_json: bool) -> None:
    """Delete feedback older than the retention age and report what was removed (S3: the lifecycle
    rule of infra/appsim.yaml does the same every day)."""
    config = load_config(config_path, store)
    days = older_than if older_than is not None else config.retention.feedback_days
    now = parse_utc(at) if at else datetime.now(timezone.utc)
    if not dry_run:
        layout.check_store(config.store, writing=True)
    hours = expired_hours(config.store, days, now)
    if not dry_run:
        for hour in hours:
            storage.remove(hour.uri)
        _remove_empty_parents(config.store, hours)
    files, size = sum(h.files for h in hours), sum(h.bytes for h in hours)
    if as_json:
        click.echo(json.dumps({"store": config.store, "older_than_days": days, "cutoff": (now - timedelta(days=days)).isoformat(),
                               "dry_run": dry_run, "hours": len(hours), "files": files, "bytes": size,
                               "removed": [asdict(h) for h in hours]}, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(hours)} feedback hour folder(s), {files} file(s), {size:,} bytes older than {days:g} days "
               f"(before {(now - timedelta(days=days)):%Y-%m-%d %H:%M} UTC)")
    for hour in hours:
        click.echo(f"  {hour.hour}  {hour.files} file(s)  {hour.bytes:,} bytes")
