"""`appsim neighbors`: bulk neighbours of a registered version (steps/export_neighbors.py)."""

from __future__ import annotations

from typing import Any

import click

from pipelines.cli.errors import UsageProblem
from pipelines.cli.options import dump, json_option, load, store_and_config

version_option = click.option("--version", "version", type=int, default=None,
                              help="Registry version to export (default: the champion, the newest Approved).")
k_option = click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True, help="Neighbours per app.")


def registered_version(config: Any, version: int | None) -> Any:
    from models.registry_backends import open_registry

    registry = open_registry(config.registry_uri, read_only=True)
    model = registry.get(version) if version is not None else registry.champion()
    if model is None:
        raise UsageProblem("the registry has no Approved version; pass --version N or run `appsim retrain`")
    return model


@click.group("neighbors")
def neighbors_group() -> None:
    """Bulk neighbours: every catalog app's top-k neighbours and predicted CTR/CVR, as Parquet."""


@neighbors_group.command("export")
@version_option
@k_option
@store_and_config
@json_option
def export_command(version: int | None, k: int, store: str | None, config_path: str | None, as_json: bool) -> None:
    """Write <store>/neighbors/v<N>/neighbors.parquet (FAISS batch search on every core; progress on stderr)."""
    from models.progress import Progress
    from steps import export_neighbors

    config = load(config_path, store)
    model = registered_version(config, version)
    result = export_neighbors.run(config.store, model.artifact_uri, model.version, k,
                                  progress=Progress("", every=2.0) if not as_json else Progress.quiet())
    summary = {"uri": result.uri, "model_version": result.version, "k": result.k, "apps": result.apps,
               "seconds": round(result.seconds, 3), "apps_per_second": round(result.apps_per_second, 1)}
    if as_json:
        dump(summary)
    else:
        click.echo(f"version {result.version}: top-{result.k} neighbours of {result.apps:,} apps in "
                   f"{result.seconds:.1f} s ({result.apps_per_second:,.0f} apps/s) -> {result.uri}")


@neighbors_group.command("transform")
@version_option
@k_option
@click.option("--role-arn", default=None, help="The SageMaker execution role (default: sagemaker.role_arn).")
@click.option("--instance-type", default=None, help="Transform instance type (default: sagemaker.processing_instance_type).")
@store_and_config
def transform_command(version: int | None, k: int, role_arn: str | None, instance_type: str | None,
                      store: str | None, config_path: str | None) -> None:
    """On AWS: the same export as a SageMaker Batch Transform job over the serving image (JSON Lines; prints JSON)."""
    from pipelines.batch_transform import start_neighbors_transform  # boto3: the `aws` extra

    config = load(config_path, store)
    started = start_neighbors_transform(config, registered_version(config, version), k, role_arn=role_arn,
                                        instance_type=instance_type)
    dump(started)
