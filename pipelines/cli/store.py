"""`appsim store`: is the store whole (`check`), and keep it within its retention (`prune`); pipelines/store.py."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta, timezone

import click

from pipelines.cli.options import dump, json_option, load, store_and_config


@click.group("store")
def store_group() -> None:
    """The store itself: check that it is whole, prune old feedback."""


@store_group.command("check")
@store_and_config
@json_option
def check_command(store: str | None, config_path: str | None, as_json: bool) -> None:
    """Report what is missing or corrupt in the store and how to fix it; exit 1 when something is wrong."""
    from pipelines.store import check_store

    config = load(config_path, store)
    findings = check_store(config)
    errors = sum(f.status == "error" for f in findings)
    warnings = sum(f.status == "warning" for f in findings)
    if as_json:
        dump({"store": config.store, "ok": errors == 0, "errors": errors, "warnings": warnings,
              "findings": [asdict(f) for f in findings]})
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
@store_and_config
@json_option
def prune_command(older_than: float | None, dry_run: bool, at: str | None, store: str | None,
                  config_path: str | None, as_json: bool) -> None:
    """Delete feedback older than the retention age and report what was removed (S3: the lifecycle
    rule of infra/appsim.yaml does the same every day)."""
    from models.events import parse_utc
    from pipelines.store import prune_feedback

    config = load(config_path, store)
    days = older_than if older_than is not None else config.retention.feedback_days
    now = parse_utc(at) if at else datetime.now(timezone.utc)
    hours = prune_feedback(config.store, days, now, dry_run)
    files, size = sum(h.files for h in hours), sum(h.bytes for h in hours)
    cutoff = now - timedelta(days=days)
    if as_json:
        dump({"store": config.store, "older_than_days": days, "cutoff": cutoff.isoformat(), "dry_run": dry_run,
              "hours": len(hours), "files": files, "bytes": size, "removed": [asdict(h) for h in hours]})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(hours)} feedback hour folder(s), {files} file(s), {size:,} bytes older than {days:g} days "
               f"(before {cutoff:%Y-%m-%d %H:%M} UTC)")
    for hour in hours:
        click.echo(f"  {hour.hour}  {hour.files} file(s)  {hour.bytes:,} bytes")
