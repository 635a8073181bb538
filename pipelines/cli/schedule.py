"""`appsim schedule`: EventBridge Scheduler schedules of the retraining pipeline and the daily A/B decision
(pipelines/aws.py; the `aws` extra and AWS credentials)."""

from __future__ import annotations

import click

from pipelines.cli.errors import CommandFailed
from pipelines.cli.options import dump, json_option, load, params_option, store_and_config
from pipelines.cli.pipeline import image_option, load_with_image


@click.group("schedule")
def schedule_group() -> None:
    """The weekly retraining schedule and the daily A/B decision schedule (EventBridge Scheduler)."""


@schedule_group.command("set")
@click.option("--role-arn", required=True, help="Role EventBridge Scheduler assumes (sagemaker:StartPipelineExecution).")
@params_option
@store_and_config
def schedule_set_command(role_arn: str, params: tuple[str, ...], store: str | None, config_path: str | None) -> None:
    """Create or update the schedule: cron and timezone from pipeline.yaml, its parameters passed to every run."""
    from pipelines import aws
    from pipelines.config import parse_override

    config = load(config_path, store)
    arn = aws.set_schedule(config, role_arn, dict(parse_override(p) for p in params))
    click.echo(f"schedule {config.schedule.name} set: {config.schedule.cron} ({config.schedule.timezone}) -> "
               f"{config.pipeline_name}: {arn}")


@schedule_group.command("show")
@store_and_config
@json_option
def schedule_show_command(store: str | None, config_path: str | None, as_json: bool) -> None:
    """Show the schedule and the parameters it starts the pipeline with (JSON; exit 1 when there is none)."""
    from pipelines import aws

    config = load(config_path, store)
    shown = aws.show_schedule(config)
    if shown is None:
        raise CommandFailed(f"no schedule named {config.schedule.name}; `appsim schedule set --role-arn ARN` creates it")
    dump(shown)


@schedule_group.command("set-decision")
@click.option("--role-arn", required=True,
              help="Role EventBridge Scheduler assumes (sagemaker:CreateProcessingJob, iam:PassRole on the job role).")
@click.option("--job-role-arn", default=None, help="SageMaker execution role of the decision job (default: sagemaker.role_arn).")
@image_option
@store_and_config
def schedule_set_decision_command(role_arn: str, job_role_arn: str | None, image_uri: str | None, store: str | None,
                                  config_path: str | None) -> None:
    """Create or update the daily A/B decision schedule (rollout.schedule in pipeline.yaml): `appsim ab decide`
    as a SageMaker Processing job."""
    from pipelines import aws

    config = load_with_image(config_path, store, image_uri)
    arn = aws.set_decision_schedule(config, role_arn, job_role_arn or config.sagemaker.role_arn)
    click.echo(f"schedule {config.rollout.schedule.name} set: {config.rollout.schedule.cron} "
               f"({config.rollout.schedule.timezone}) -> appsim ab decide: {arn}")


@schedule_group.command("delete")
@store_and_config
def schedule_delete_command(store: str | None, config_path: str | None) -> None:
    """Delete the schedule (the pipeline stays)."""
    from pipelines import aws

    config = load(config_path, store)
    deleted = aws.delete_schedule(config)
    click.echo(f"schedule {config.schedule.name} {'deleted' if deleted else 'did not exist'}")
