"""The AWS commands of `appsim`: the SageMaker pipeline, its weekly schedule, Kinesis feedback.

    appsim pipeline definition [--out FILE]      the definition JSON (offline, no credentials)
    appsim pipeline upsert --role-arn ARN        create or update the pipeline on SageMaker
    appsim schedule set --role-arn ARN           the weekly EventBridge Scheduler schedule
    appsim schedule show | delete
    appsim feedback pull-kinesis --stream NAME   copy new Kinesis records into the store's feedback
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipelines.config import PipelineConfig, load_config, parse_override

_store = click.option("--store", envvar="APPSIM_STORE", default=None,
                      help="Store URI (s3://bucket/prefix). Default: $APPSIM_STORE, else backends.store in pipeline.yaml.")
_config = click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
                       help="pipeline.yaml to use (default: the repository's).")
_image = click.option("--image-uri", default=None,
                      help="The appsim job image in ECR (default: sagemaker.image_uri in pipeline.yaml).")
_params = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                       help="Pipeline parameter for the scheduled runs (repeatable).")


def _load(config_path: str | None, store: str | None, image_uri: str | None = None) -> PipelineConfig:
    config = load_config(config_path, store)
    if image_uri:
        config = config.model_copy(update={"sagemaker": config.sagemaker.model_copy(update={"image_uri": image_uri})})
    return config


def _aws():  # boto3 is the `aws` extra: the embedded mode's CLI must load without it
    from pipelines import aws

    return aws


def _overrides(params: tuple[str, ...]) -> dict[str, str]:
    return dict(parse_override(p) for p in params)


@click.group("pipeline")
def pipeline_group() -> None:
    """The retraining pipeline on SageMaker."""


@pipeline_group.command("definition")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the JSON here instead of stdout.")
@click.option("--role-arn", default=None, help="SageMaker execution role (default: sagemaker.role_arn).")
@_image
@_store
@_config
def definition_command(out: str | None, role_arn: str | None, image_uri: str | None, store: str | None,
                       config_path: str | None) -> None:
    """Print the SageMaker pipeline definition. Needs no AWS account: unset values show as placeholders."""
    config = _load(config_path, store, image_uri)
    target = _aws().Target.from_config(config, role_arn, preview=True)
    from pipelines import sagemaker_pipeline

    text = json.dumps(sagemaker_pipeline.definition(config, target), indent=2, sort_keys=True)
    for note in target.placeholders():
        click.echo(f"note: placeholder {note}", err=True)
    if out:
        Path(out).write_text(text + "\n")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)


@pipeline_group.command("upsert")
@click.option("--role-arn", default=None, help="SageMaker execution role (default: sagemaker.role_arn).")
@click.option("--definition", "definition_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Deploy this definition file (from `appsim pipeline definition --out`) instead of building one.")
@_image
@_store
@_config
def upsert_command(role_arn: str | None, definition_path: str | None, image_uri: str | None, store: str | None,
                   config_path: str | None) -> None:
    """Create or update the pipeline on SageMaker from pipeline.yaml."""
    config = _load(config_path, store, image_uri)
    definition = json.loads(Path(definition_path).read_text()) if definition_path else None
    arn = _aws().upsert_pipeline(config, role_arn, definition=definition)
    click.echo(f"pipeline {config.pipeline_name} upserted: {arn}")


@click.group("schedule")
def schedule_group() -> None:
    """The weekly retraining schedule (EventBridge Scheduler -> SageMaker pipeline)."""


@schedule_group.command("set")
@click.option("--role-arn", required=True, help="Role EventBridge Scheduler assumes (sagemaker:StartPipelineExecution).")
@_params
@_store
@_config
def schedule_set_command(role_arn: str, params: tuple[str, ...], store: str | None, config_path: str | None) -> None:
    """Create or update the schedule: cron and timezone from pipeline.yaml, its parameters passed to every run."""
    config = _load(config_path, store)
    arn = _aws().set_schedule(config, role_arn, _overrides(params))
    click.echo(f"schedule {config.schedule.name} set: {config.schedule.cron} ({config.schedule.timezone}) -> "
               f"{config.pipeline_name}: {arn}")


@schedule_group.command("show")
@_store
@_config
def schedule_show_command(store: str | None, config_path: str | None) -> None:
    """Show the schedule and the parameters it starts the pipeline with."""
    config = _load(config_path, store)
    shown = _aws().show_schedule(config)
    if shown is None:
        click.echo(f"no schedule named {config.schedule.name}; `appsim schedule set --role-arn ARN` creates it")
        sys.exit(1)
    click.echo(json.dumps(shown, indent=2, sort_keys=True))


@schedule_group.command("set-decision")
@click.option("--role-arn", required=True,
              help="Role EventBridge Scheduler assumes (sagemaker:CreateProcessingJob, iam:PassRole on the job role).")
@click.option("--job-role-arn", default=None, help="SageMaker execution role of the decision job (default: sagemaker.role_arn).")
@_image
@_store
@_config
def schedule_set_decision_command(role_arn: str, job_role_arn: str | None, image_uri: str | None, store: str | None,
                                  config_path: str | None) -> None:
    """Create or update the daily A/B decision schedule (rollout.schedule in pipeline.yaml): `appsim ab decide`
    as a SageMaker Processing job."""
    config = _load(config_path, store, image_uri)
    arn = _aws().set_decision_schedule(config, role_arn, job_role_arn or config.sagemaker.role_arn)
    click.echo(f"schedule {config.rollout.schedule.name} set: {config.rollout.schedule.cron} "
               f"({config.rollout.schedule.timezone}) -> appsim ab decide: {arn}")


@schedule_group.command("delete")
@_store
@_config
def schedule_delete_command(store: str | None, config_path: str | None) -> None:
    """Delete the schedule (the pipeline stays)."""
    config = _load(config_path, store)
    deleted = _aws().delete_schedule(config)
    click.echo(f"schedule {config.schedule.name} {'deleted' if deleted else 'did not exist'}")


@click.group("feedback")
def feedback_group() -> None:
    """Feedback events on AWS."""


@feedback_group.command("pull-kinesis")
@click.option("--stream", required=True, help="Kinesis data stream name.")
@_store
@_config
def pull_kinesis_command(stream: str, store: str | None, config_path: str | None) -> None:
    """Read new records from a Kinesis stream into <store>/feedback (a checkpoint skips what was read)."""
    from pipelines import kinesis_source

    config = _load(config_path, store)
    result = kinesis_source.pull(stream, config.store, region=config.sagemaker.region)
    click.echo(f"pulled {result.records:,} records from {stream} into {result.objects} objects "
               f"({result.shards} shards; checkpoint {result.checkpoint_uri})")
