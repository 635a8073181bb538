"""`appsim pipeline`: the retraining pipeline's SageMaker definition (pipelines/sagemaker_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipelines.cli.options import load, store_and_config

image_option = click.option("--image-uri", default=None,
                            help="The appsim job image in ECR (default: sagemaker.image_uri in pipeline.yaml).")
role_option = click.option("--role-arn", default=None, help="SageMaker execution role (default: sagemaker.role_arn).")


def load_with_image(config_path: str | None, store: str | None, image_uri: str | None = None):
    """The config, with ``--image-uri`` in place of sagemaker.image_uri when given."""
    config = load(config_path, store)
    if image_uri:
        config = config.model_copy(update={"sagemaker": config.sagemaker.model_copy(update={"image_uri": image_uri})})
    return config


@click.group("pipeline")
def pipeline_group() -> None:
    """The retraining pipeline on SageMaker: its definition, and deploying it (the `aws` extra)."""


@pipeline_group.command("definition")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the JSON here instead of stdout.")
@role_option
@image_option
@store_and_config
def definition_command(out: str | None, role_arn: str | None, image_uri: str | None, store: str | None,
                       config_path: str | None) -> None:
    """Print the SageMaker pipeline definition (JSON). Needs no AWS account: unset values show as placeholders."""
    from pipelines import sagemaker_pipeline, sagemaker_target

    config = load_with_image(config_path, store, image_uri)
    target = sagemaker_target.Target.from_config(config, role_arn, preview=True)
    text = json.dumps(sagemaker_pipeline.definition(config, target), indent=2, sort_keys=True)
    for note in target.placeholders():
        click.echo(f"note: placeholder {note}", err=True)
    if out:
        Path(out).write_text(text + "\n")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)


@pipeline_group.command("upsert")
@role_option
@click.option("--definition", "definition_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Deploy this definition file (from `appsim pipeline definition --out`) instead of building one.")
@image_option
@store_and_config
def upsert_command(role_arn: str | None, definition_path: str | None, image_uri: str | None, store: str | None,
                   config_path: str | None) -> None:
    """Create or update the pipeline on SageMaker from pipeline.yaml."""
    from pipelines import aws

    config = load_with_image(config_path, store, image_uri)
    definition = json.loads(Path(definition_path).read_text()) if definition_path else None
    arn = aws.upsert_pipeline(config, role_arn, definition=definition)
    click.echo(f"pipeline {config.pipeline_name} upserted: {arn}")
