"""`appsim registry`: model versions (models/registry.py); the champion is the newest Approved."""

from __future__ import annotations

from typing import Any

import click

from pipelines.cli.errors import UsageProblem
from pipelines.cli.options import dump, json_option, load, signed_percent, store_and_config, table, warn


@click.group("registry")
def registry_group() -> None:
    """Model versions: list, show, approve, reject."""


def open_store_registry(config_path: str | None, store: str | None, writing: bool = False) -> Any:
    from models.registry_backends import open_registry

    return open_registry(load(config_path, store, writing=writing).registry_uri, read_only=not writing)


@registry_group.command("list")
@store_and_config
@json_option
def registry_list(store: str | None, config_path: str | None, as_json: bool) -> None:
    """Every version, newest first; the champion is the newest Approved."""
    registry = open_store_registry(config_path, store)
    versions = registry.list_versions()
    if as_json:
        dump([v.model_dump(mode="json") for v in versions])
        return
    if not versions:
        click.echo("no versions yet: run `appsim retrain`")
        return
    champion = registry.champion()
    rows = [[("*" if champion and v.version == champion.version else "") + str(v.version), v.status,
             v.created_at.strftime("%Y-%m-%d %H:%M:%S"), v.recall_at_10,
             signed_percent(v.metrics.get("relative_improvement")), v.lineage.get("run_id")] for v in versions]
    click.echo(table(["version", "status", "created_at (UTC)", "recall@10", "vs reference", "run"], rows))
    click.echo("* champion (newest Approved); vs reference: recall@10 change over the champion (or the popularity "
               "baseline) at registration")


@registry_group.command("show")
@click.argument("version", type=int)
@store_and_config
def registry_show(version: int, store: str | None, config_path: str | None) -> None:
    """One version with its metrics and lineage (JSON)."""
    dump(open_store_registry(config_path, store).get(version).model_dump(mode="json"))


@registry_group.command("approve")
@click.argument("version", type=int)
@click.option("--reason", default="approved by hand", show_default=True, help="Why, recorded with the status.")
@click.option("--force", is_flag=True, help="Approve a version that is Rejected (by the gate, an A/B test or by hand).")
@store_and_config
@json_option
def registry_approve(version: int, reason: str, force: bool, store: str | None, config_path: str | None,
                     as_json: bool) -> None:
    """Approve a version (it becomes the champion if it is the newest Approved)."""
    registry = open_store_registry(config_path, store, writing=True)
    current = registry.get(version)
    if current.status == "Rejected":
        why = f"it was rejected: {current.status_reason or 'no reason recorded'}"
        if not force:
            raise UsageProblem(f"version {version} is Rejected ({why}); pass --force to approve it anyway")
        warn(f"approving version {version} although {why}")
    updated = registry.set_status(version, "Approved", reason)
    champion = registry.champion()
    if as_json:
        dump({**updated.model_dump(mode="json"), "champion_version": champion.version if champion else None})
        return
    click.echo(f"version {updated.version} is now {updated.status}"
               + ("" if champion is None or champion.version == updated.version else
                  f"; the champion stays v{champion.version} (the newest Approved)"))


@registry_group.command("reject")
@click.argument("version", type=int)
@click.option("--reason", default="rejected by hand", show_default=True, help="Why, recorded with the status.")
@store_and_config
@json_option
def registry_reject(version: int, reason: str, store: str | None, config_path: str | None, as_json: bool) -> None:
    """Reject a version (rejecting the champion rolls back to the previous Approved one)."""
    registry = open_store_registry(config_path, store, writing=True)
    updated = registry.set_status(version, "Rejected", reason)
    if as_json:
        champion = registry.champion()
        dump({**updated.model_dump(mode="json"), "champion_version": champion.version if champion else None})
        return
    click.echo(f"version {updated.version} is now {updated.status}")
