"""`appsim neighbors`: bulk neighbours of a registered version (steps/export_neighbors.py)."""

from __future__ import annotations

import json

import click

from models.progress import Progress
from models.registry import ModelVersion
from models.registry_backends import open_registry
from pipelines.config import PipelineConfig, load_config
from steps import export_neighbors


@click.group("neighbors")
def neighbors_group() -> None:
    """Bulk neighbours: every catalog app's top-k neighbours and predicted CTR/CVR, as Parquet."""


def _version(config: PipelineConfig, version: int | None) -> ModelVersion:
    registry = open_registry(config.registry_uri)
    model = registry.get(version) if version is not None else registry.champion()
    if model is None:
        raise click.UsageError("the registry has no Approved version; pass --version N or run `appsim retrain`")
    return model


@neighbors_group.command("export")
@click.option("--version", "version", type=int, default=None,
              help="registry version to export (default: the champion, the newest Approved)")
@click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True, help="neighbours per app")
@click.option("--store", envvar="APPSIM_STORE", default=None, help="store folder or URI (default: pipeline.yaml's)")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="pipeline.yaml to use")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def export_command(version: int | None, k: int, store: str | None, config_path: str | None, as_json: bool) -> None:
    """Write <store>/neighbors/v<N>/neighbors.parquet (FAISS batch search on every core; progress on stderr)."""
    config = load_config(config_path, store)
    model = _version(config, version)
    result = export_neighbors.run(config.store, model.artifact_uri, model.version, k,
                                  progress=Progress("", every=2.0) if not as_json else Progress.quiet())
    summary = {"uri": result.uri, "model_version": result.version, "k": result.k, "apps": result.apps,
               "seconds": round(result.seconds, 3), "apps_per_second": round(result.apps_per_second, 1)}
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        click.echo(f"version {result.version}: top-{result.k} neighbours of {result.apps:,} apps in "
                   f"{result.seconds:.1f} s ({result.apps_per_second:,.0f} apps/s) -> {result.uri}")


@neighbors_group.command("transform")
@click.option("--version", "version", type=int, default=None, help="registry version (default: the champion)")
@click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True, help="neighbours per app")
@click.option("--role-arn", default=None, help="the SageMaker execution role (default: sagemaker.role_arn)")
@click.option("--instance-type", default=None, help="default: sagemaker.processing_instance_type")
@click.option("--store", envvar="APPSIM_STORE", default=None, help="the S3 store (default: pipeline.yaml's)")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="pipeline.yaml to use")
def transform_command(version: int | None, k: int, role_arn: str | None, instance_type: str | None,
                      store: str | None, config_path: str | None) -> None:
    """On AWS: the same export as a SageMaker Batch Transform job over the serving image (JSON Lines)."""
    from pipelines.batch_transform import start_neighbors_transform  # boto3: the `aws` extra

    config = load_config(config_path, store)
    started = start_neighbors_transform(config, _version(config, version), k, role_arn=role_arn,
                                        instance_type=instance_type)
    click.echo(json.dumps(started, indent=2, sort_keys=True))
